//! libFuzzer target: arbitrary query strings through parse_query and, when
//! they parse, render_select/render_count against a fixed schema; the SQL
//! must prepare in SQLite and nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

thread_local! {
    static DB: resin_odata_fuzz::Db = resin_odata_fuzz::Db::new();
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        DB.with(|db| db.check(s));
    }
});
