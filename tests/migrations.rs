//! Schema and session rules for PlanetScale (SPEC §9), checked without a
//! database: migrations stay online-safe and additive (deploy requests run
//! them beside the older version), and no code relies on session state.

use std::collections::HashMap;

fn migrations() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| {
            let sql = std::fs::read_to_string(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, strip_comments(&sql).to_uppercase())
        })
        .collect();
    files.sort();
    files
}

fn strip_comments(sql: &str) -> String {
    sql.lines()
        .map(|l| l.split("--").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The statements of a file, whitespace collapsed.
fn statements(sql: &str) -> Vec<String> {
    sql.split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn migrations_are_online_safe() {
    for (name, sql) in migrations() {
        for statement in statements(&sql) {
            for forbidden in [
                "FOREIGN KEY",
                "REFERENCES ",
                "RENAME COLUMN",
                "CHANGE COLUMN",
                "RENAME TABLE",
                "RENAME TO",
            ] {
                assert!(
                    !statement.contains(forbidden),
                    "{name}: `{forbidden}` in {statement}"
                );
            }
            // Dropping an index is fine; a column or table an older version
            // still reads is not.
            for forbidden in ["DROP COLUMN", "DROP TABLE"] {
                assert!(
                    !statement.contains(forbidden),
                    "{name}: `{forbidden}` in {statement}"
                );
            }
            if statement.starts_with("ALTER TABLE") {
                let dropped: Vec<&str> = statement
                    .split("DROP ")
                    .skip(1)
                    .map(|rest| rest.split_whitespace().next().unwrap_or_default())
                    .collect();
                assert!(
                    dropped.iter().all(|what| matches!(*what, "KEY" | "INDEX")),
                    "{name}: only indexes may be dropped: {statement}"
                );
            }
            if statement.starts_with("CREATE TABLE") {
                assert!(
                    statement.contains("PRIMARY KEY"),
                    "{name}: a table without a primary key: {statement}"
                );
            }
        }
    }
}

/// The columns that must compare byte for byte end up with an explicit
/// utf8mb4 binary collation (their last definition wins).
#[test]
fn exact_match_columns_name_a_binary_collation() {
    let exact = [
        ("IDEMPOTENCY_KEYS", "IDEMPOTENCY_KEY"),
        ("ORDERS", "REFERENCE"),
    ];
    let mut last: HashMap<(String, String), String> = HashMap::new();
    for (_, sql) in migrations() {
        for statement in statements(&sql) {
            let table = statement
                .strip_prefix("CREATE TABLE ")
                .or_else(|| statement.strip_prefix("ALTER TABLE "))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string);
            let Some(table) = table else { continue };
            for (t, column) in exact {
                if table != t {
                    continue;
                }
                for part in statement.split(',') {
                    let part = part.trim();
                    let part = part
                        .strip_prefix(&format!("ALTER TABLE {t} "))
                        .unwrap_or(part);
                    let part = part
                        .strip_prefix(&format!("CREATE TABLE {t} ("))
                        .unwrap_or(part);
                    let definition = part
                        .strip_prefix("MODIFY COLUMN ")
                        .or_else(|| part.strip_prefix("ADD COLUMN "))
                        .unwrap_or(part);
                    if definition.starts_with(&format!("{column} ")) {
                        last.insert((t.to_string(), column.to_string()), definition.to_string());
                    }
                }
            }
        }
    }
    for (table, column) in exact {
        let definition = last
            .get(&(table.to_string(), column.to_string()))
            .unwrap_or_else(|| panic!("{table}.{column} is not defined in migrations/"));
        assert!(
            definition.contains("CHARACTER SET UTF8MB4")
                && definition.contains("COLLATE UTF8MB4_BIN"),
            "{table}.{column} must name utf8mb4 and utf8mb4_bin: {definition}"
        );
    }
}

/// Vitess applies `SET TRANSACTION ISOLATION LEVEL` to the whole session,
/// so a pooled connection would carry it into later transactions: no code
/// sends it. (Sessions of the pipeline's pool are set once, on connect.)
#[test]
fn no_code_sets_a_transactions_isolation_on_a_shared_pool() {
    fn walk(dir: &std::path::Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for line in text.lines() {
                    if line.contains("\"SET TRANSACTION") {
                        found.push(format!("{}: {}", path.display(), line.trim()));
                    }
                }
            }
        }
    }
    let mut found = vec![];
    walk(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut found,
    );
    assert!(found.is_empty(), "{found:#?}");
}
