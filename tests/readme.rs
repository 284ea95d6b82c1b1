//! The README's settings table is `ringws::settings_table()`, which is written from
//! `Config::SETTINGS` (the same declarations the engine, the builder's docs and `ringws serve --help`
//! come from). This test fails when the block between the README's markers differs from it, and
//! prints the block the README should hold, so the table can never drift from the code.

use std::path::Path;

const START: &str = "<!-- settings-table:start -->";
const END: &str = "<!-- settings-table:end -->";

/// The text between the markers, without the blank lines that set the table apart from them.
fn block(readme: &str) -> Result<&str, String> {
    let mut starts = readme.match_indices(START);
    let Some((start, _)) = starts.next() else {
        return Err(format!("README.md has no {START} marker"));
    };
    if starts.next().is_some() {
        return Err(format!("README.md has more than one {START} marker"));
    }
    let after = &readme[start + START.len()..];
    let Some(end) = after.find(END) else {
        return Err(format!("README.md has no {END} marker after {START}"));
    };
    if after[end + END.len()..].contains(END) {
        return Err(format!("README.md has more than one {END} marker"));
    }
    Ok(after[..end].trim_matches('\n'))
}

#[test]
fn readme_settings_table_is_the_engines() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let expected = ringws::settings_table();
    let found = block(&readme).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        found == expected.trim_end_matches('\n'),
        "the settings table in README.md differs from ringws::settings_table(); \
         replace the block between the markers with:\n\n{START}\n\n{expected}\n{END}\n"
    );
}

#[test]
fn the_block_is_found_between_the_markers() {
    let table = "| setting | default | valid values |\n| --- | --- | --- |\n| `a` | 1 | any |\n";
    let readme = format!("intro\n\n{START}\n\n{table}\n{END}\n\nmore\n");
    assert_eq!(block(&readme).unwrap(), table.trim_end_matches('\n'));
    assert!(block("no markers").is_err());
    assert!(block(&format!("{START}\n{table}")).is_err());
    assert!(block(&format!("{START}\n{START}\n{table}{END}")).is_err());
}
