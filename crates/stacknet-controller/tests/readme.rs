//! The README's table of Event reasons is the enum's: every reason stacknet can report is in
//! it, with what it is said on and what it means, and nothing else is.
//! `STACKNET_WRITE_README=1 cargo test -p stacknet-controller --test readme` rewrites it.

use stacknet_engine::Reason;

const BEGIN: &str = "<!-- reasons:begin -->\n";
const END: &str = "<!-- reasons:end -->";

fn table() -> String {
    let mut t = String::from("| reason | on | meaning |\n|---|---|---|\n");
    for r in Reason::ALL {
        t.push_str(&format!("| `{}` | {} | {} |\n", r.as_str(), r.on(), r.meaning()));
    }
    t
}

#[test]
fn the_readme_lists_every_event_reason_and_no_other() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find(BEGIN).expect("the README has a reasons block") + BEGIN.len();
    let end = start + text[start..].find(END).expect("the reasons block ends");
    let want = table();
    if std::env::var_os("STACKNET_WRITE_README").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &text[..start], &text[end..])).unwrap();
        return;
    }
    assert!(
        text[start..end] == want,
        "README.md's reasons table differs from stacknet_engine::Reason; it should read:\n{want}\n\
         (STACKNET_WRITE_README=1 cargo test -p stacknet-controller --test readme writes it)"
    );
}
