//! A running engine's data directory copied as a crash at one moment would leave it, for the
//! crash tests (`checkpoint.rs`, `records.rs`).

use std::path::Path;

/// Copies a directory tree as it is at this moment. Files that vanish meanwhile (sled
/// replacing a snapshot) are skipped, as a crash would not have them either.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => panic!("list {}: {e}", from.display()),
    };
    for e in entries.flatten() {
        let target = to.join(e.file_name());
        match e.file_type() {
            Ok(t) if t.is_dir() => copy_tree(&e.path(), &target),
            Ok(_) => match std::fs::copy(e.path(), &target) {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("copy {}: {err}", e.path().display()),
            },
            Err(_) => {}
        }
    }
}

/// The data directory as a crash would leave it: the view first, the log last, so that the
/// log copied is at least as far as any checkpoint stamp copied.
pub fn crash_copy(data: &Path, to: &Path) {
    onecard_engine::journal::testing::copy_view(data, to).unwrap();
    for e in std::fs::read_dir(data).unwrap().flatten() {
        let name = e.file_name();
        if name != "view" && name != "log" {
            let target = to.join(&name);
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &target);
            } else {
                let _ = std::fs::copy(e.path(), target);
            }
        }
    }
    copy_tree(&data.join("log"), &to.join("log"));
}
