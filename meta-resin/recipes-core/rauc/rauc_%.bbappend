# resin: no rauc-mark-good. meta-rauc recommends it, and it marks the booted
# slot good at boot-complete.target, before resin's supervisor has checked
# anything, so a trial boot of a broken OS would be committed and never fall
# back. The resin supervisor marks the booted slot good through RAUC only after
# its health check, and resin-boot-guard (supervisor/dist/) reboots a trial
# boot it never confirms. resin-image.bbclass also puts
# the package in PACKAGE_EXCLUDE, so nothing can pull it in another way.
RRECOMMENDS:${PN}:remove:resin = "${PN}-mark-good"
