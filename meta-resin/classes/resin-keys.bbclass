# resin_check_rauc_keys: the RAUC keys a build uses must be real ones.
#
# Production is the default: RESIN_RAUC_KEYRING_FILE, RESIN_RAUC_CERT_FILE and
# RESIN_RAUC_KEY_FILE have no default, and the public development keys of
# recipes-core/rauc/files/dev-keys/ are refused unless RESIN_DEVELOPMENT = "1"
# (kas/dev.yml). The check runs at task time (a prefunc of the tasks that use
# the keys), so a build without keys still parses and resolves its task graph.

resin_check_rauc_keys[doc] = "Fails the task when the RAUC keys are unset, missing, or the development keys in a production build"
python resin_check_rauc_keys() {
    howto = ("Make your own with: resin-imagegen keys --out <dir> --name <product> (a CA "
             "and a signing certificate; keep ca.key.pem offline), then set "
             "RESIN_RAUC_KEYRING_FILE (ca.cert.pem), RESIN_RAUC_CERT_FILE and RESIN_RAUC_KEY_FILE "
             "to their absolute paths in local.conf or a kas file. "
             "For a development build add kas/dev.yml (kas build kas/qemuarm64.yml:kas/dev.yml).")
    dev = d.getVar('RESIN_DEVELOPMENT') == '1'
    for var in ('RESIN_RAUC_KEYRING_FILE', 'RESIN_RAUC_CERT_FILE', 'RESIN_RAUC_KEY_FILE'):
        path = d.getVar(var) or ''
        if not path:
            bb.fatal("%s is not set: a resin OS build needs its own RAUC keys. %s" % (var, howto))
        if '/dev-keys/' in path:
            if not dev:
                bb.fatal("%s = %s is meta-resin's public DEVELOPMENT key, which a production build "
                         '(RESIN_DEVELOPMENT != "1") refuses. %s' % (var, path, howto))
            bb.warn("%s uses meta-resin's public DEVELOPMENT key %s: never ship this image" % (var, path))
        if var != 'RESIN_RAUC_KEY_FILE' or not path.startswith('pkcs11:'):
            if not os.path.isfile(path):
                bb.fatal("%s = %s: no such file. %s" % (var, path, howto))
}
