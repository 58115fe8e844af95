//! The documentation's promises: the signing snippets compute the DESIGN
//! vectors, and both READMEs show them as they are.

use std::process::Command;

const VECTORS: &str = "3395a064fd0f7626285e0f630f674a6e37180a4353e5c30777452affb51ef346\n\
                       dc23568e23e62f8a5e989693d165b4b0efc348e0982c2c1f4e547794eef90f8a\n";

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .current_dir(root().join("docs/sign"))
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

#[test]
fn both_readmes_show_the_snippets_verbatim() {
    for readme in ["README.md", "README.zh-CN.md"] {
        let text = std::fs::read_to_string(root().join(readme)).expect(readme);
        for snippet in ["sign.py", "sign.go", "Sign.java"] {
            let code =
                std::fs::read_to_string(root().join("docs/sign").join(snippet)).expect(snippet);
            assert!(
                text.contains(&code),
                "{readme} does not show docs/sign/{snippet} as it is"
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
