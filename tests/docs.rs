//! The documentation's promises: the signing snippets compute the
//! README's test vectors, and both READMEs show them as they are.

use std::process::Command;

const VECTORS: &str = "3395a064fd0f7626285e0f630f674a6e37180a4353e5c30777452affb51ef346\n\
                       dc23568e23e62f8a5e989693d165b4b0efc348e0982c2c1f4e547794eef90f8a\n";

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command, what: &str) -> String {
    run_in("docs/sign", cmd, what)
}

fn run_in(dir: &str, cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .current_dir(root().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("{what} is not installed ({e}); bin/test.sh installs it"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_python_snippet_signs_the_vectors() {
    assert_eq!(
        run(Command::new("python3").arg("sign.py"), "python3"),
        VECTORS
    );
}

#[test]
fn the_go_snippet_signs_the_vectors() {
    let cache = root().join("target/go-cache");
    let out = run(
        Command::new("go")
            .args(["run", "sign.go"])
            .env("GOCACHE", &cache)
            .env("GOPATH", root().join("target/go-path"))
            .env("GO111MODULE", "off"),
        "go",
    );
    assert_eq!(out, VECTORS);
}

#[test]
fn the_java_snippet_signs_the_vectors() {
    assert_eq!(run(Command::new("java").arg("Sign.java"), "java"), VECTORS);
}

/// The webhook checks accept the signed vector, and refuse a changed body
/// and a stale timestamp.
const VERIFIED: &str = "true\nfalse\nfalse\n";

fn run_webhook(cmd: &mut Command, what: &str) -> String {
    run_in("docs/webhook", cmd, what)
}

#[test]
fn the_webhook_checks_verify_the_vector() {
    assert_eq!(
        run_webhook(Command::new("python3").arg("verify.py"), "python3"),
        VERIFIED
    );
    assert_eq!(
        run_webhook(Command::new("java").arg("Verify.java"), "java"),
        VERIFIED
    );
    let out = run_webhook(
        Command::new("go")
            .args(["run", "verify.go"])
            .env("GOCACHE", root().join("target/go-cache"))
            .env("GOPATH", root().join("target/go-path"))
            .env("GO111MODULE", "off"),
        "go",
    );
    assert_eq!(out, VERIFIED);
}

#[test]
fn both_readmes_show_the_snippets_verbatim() {
    for readme in ["README.md", "README.zh-CN.md"] {
        let text = std::fs::read_to_string(root().join(readme)).expect(readme);
        for snippet in [
            "sign/sign.py",
            "sign/sign.go",
            "sign/Sign.java",
            "webhook/verify.py",
            "webhook/verify.go",
            "webhook/Verify.java",
        ] {
            let code = std::fs::read_to_string(root().join("docs").join(snippet)).expect(snippet);
            assert!(
                text.contains(&code),
                "{readme} does not show docs/{snippet} as it is"
            );
        }
        // The two set-up commands come first.
        let first = text.find("```sh").expect("a shell block");
        let block = &text[first..first + 300];
        assert!(
            block.contains("bin/dev.sh") && block.contains("bin/test.sh"),
            "{readme}: {block}"
        );
    }
}

/// `docker build` cannot run here (no engine), so this checks what it needs:
/// every directory Cargo.toml names or the code embeds is copied into the
/// build stage, and the build context leaves out build output and secrets.
#[test]
fn the_dockerfile_copies_everything_the_build_needs() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| l.split_whitespace())
        .collect();
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let mut needed = vec!["Cargo.toml", "Cargo.lock", "src", "migrations"];
    if manifest.contains("[[bench]]") {
        needed.push("benches");
    }
    if root().join("examples").is_dir() {
        needed.push("examples");
    }
    for path in needed {
        assert!(
            copied.contains(&path),
            "the Dockerfile does not COPY {path}"
        );
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for path in ["target/", ".tools/", ".env"] {
        assert!(
            ignore.lines().any(|l| l == path),
            ".dockerignore lacks {path}"
        );
    }
}

/// The module map of `docs/architecture.md`: every source file under `src/`
/// (tests aside), its lines, and the crate modules it uses.
fn module_map() -> String {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("src/ is readable")
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs")
                && p.file_name().is_some_and(|n| n != "tests.rs")
            {
                out.push(p);
            }
        }
    }
    let src = root().join("src");
    let mut paths = Vec::new();
    files(&src, &mut paths);
    let mut map = String::from("| file | lines | uses |\n|---|---:|---|\n");
    for p in paths {
        let rel = p
            .strip_prefix(root())
            .expect("under the root")
            .to_string_lossy()
            .into_owned();
        let own = rel
            .trim_start_matches("src/")
            .split(['/', '.'])
            .next()
            .unwrap_or_default()
            .to_owned();
        let text = std::fs::read_to_string(&p).expect("a source file");
        let mut uses: Vec<String> = text
            .match_indices("crate::")
            .filter_map(|(i, _)| {
                let rest = &text[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let preceded = text[..i].chars().last();
                (!name.is_empty()
                    && name != own
                    && name != "self"
                    && !matches!(preceded, Some(c) if c.is_ascii_alphanumeric() || c == '_'))
                .then_some(name)
            })
            .collect();
        // `m2pool_payment::x` in the binary's files.
        uses.extend(text.match_indices("m2pool_payment::").filter_map(|(i, _)| {
            let rest = &text[i + "m2pool_payment::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            name.starts_with(|c: char| c.is_ascii_lowercase())
                .then_some(name)
        }));
        // Modules only (`m2pool_payment::run` is a function).
        uses.retain(|u| src.join(format!("{u}.rs")).is_file() || src.join(u).is_dir());
        uses.sort();
        uses.dedup();
        // Files of the same folder it names through `super::`.
        let siblings: Vec<String> = std::fs::read_dir(p.parent().expect("a folder"))
            .expect("its folder is readable")
            .filter_map(|e| {
                let e = e.ok()?.path();
                let stem = e.file_stem()?.to_str()?.to_owned();
                (e.is_dir() || e.extension().is_some_and(|x| x == "rs"))
                    .then_some(stem)
                    .filter(|s| {
                        s != "mod"
                            && s != "tests"
                            && p.file_stem().is_some_and(|own| own != s.as_str())
                    })
            })
            .collect();
        let mut near: Vec<String> = siblings
            .into_iter()
            .filter(|s| {
                p.file_name().is_some_and(|n| n != "mod.rs")
                    && super_names(&text).iter().any(|n| n == s)
            })
            .map(|s| format!("./{s}"))
            .collect();
        near.sort();
        uses.extend(near);
        let lines = text.lines().count();
        map.push_str(&format!("| `{rel}` | {lines} | {} |\n", uses.join(", ")));
    }
    map
}

/// The first path segment of every `super::` path in `text`, braces
/// (`super::{a, b::c}`) included.
fn super_names(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (i, _) in text.match_indices("super::") {
        let rest = &text[i + "super::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                names.extend(group.split(',').map(ident));
            }
            None => names.push(ident(rest)),
        }
    }
    names
}

#[test]
fn the_architecture_document_maps_the_modules_as_they_are() {
    const START: &str = "<!-- module map: start -->\n";
    const END: &str = "<!-- module map: end -->";
    let path = root().join("docs/architecture.md");
    let doc = std::fs::read_to_string(&path).expect("docs/architecture.md");
    let (Some(a), Some(b)) = (doc.find(START), doc.find(END)) else {
        panic!("docs/architecture.md has no module map markers");
    };
    let now = module_map();
    let shown = &doc[a + START.len()..b];
    if shown != now && std::env::var_os("BLESS").is_some() {
        let updated = format!("{}{now}{}", &doc[..a + START.len()], &doc[b..]);
        std::fs::write(&path, updated).expect("docs/architecture.md is writable");
        return;
    }
    assert_eq!(
        shown, now,
        "docs/architecture.md's module map is out of date; `BLESS=1 cargo test --test docs` rewrites it"
    );
}
