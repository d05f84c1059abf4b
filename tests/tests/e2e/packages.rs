//! The Linux packages and units (issue #6): `cargo deb` builds both `.deb`s from the binaries README's test command
//! built (`--no-build --profile dev`; a release package is `cargo deb -p <crate>`), they unpack into a scratch root
//! with `dpkg -x`, and this looks inside: the binary, the hardened unit (`systemd-analyze verify` against that
//! root, with the host's base units copied in), the settings file as a conffile, and maintainer scripts that create the account and data dir and delete
//! data only on a purge answered "yes".

use std::path::{Path, PathBuf};
use std::process::Command;

use storesync_tests::proc::require_tool;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn works(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().is_ok_and(|o| o.status.success())
}

#[test]
fn debs_hold_the_binary_a_hardened_unit_and_data_safe_scripts() {
    let have = Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
    if !require_tool(
        "cargo-deb (`cargo install cargo-deb`), dpkg-deb and systemd-analyze",
        have && works("dpkg-deb", "--version") && works("systemd-analyze", "--version"),
    ) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    for (pkg, settings) in
        [("storesync-agent", "etc/storesync/agent.toml"), ("storesync-hub", "etc/default/storesync-hub")]
    {
        run(Command::new("cargo")
            .current_dir(workspace())
            // `--fast`: this test reads the package, it does not ship it; xz at full strength took ~10 s a package.
            .args(["deb", "-p", pkg, "--no-build", "--profile", "dev", "--fast", "--output"])
            .arg(out.path()));
        let deb = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{pkg}_")))
            .unwrap_or_else(|| panic!("no {pkg} .deb"));

        // Control data: dependencies, conffile, scripts.
        let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
        assert!(info.contains(&format!("Package: {pkg}")) && info.contains("adduser"), "{info}");
        let control = out.path().join(format!("{pkg}-control"));
        run(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&control));
        let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
        assert!(conffiles.contains(&format!("/{settings}")), "settings are a conffile: {conffiles}");
        let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
        assert!(postinst.contains("adduser --system") && postinst.contains(&format!("/var/lib/{pkg}")), "{postinst}");
        assert!(
            postinst.contains("deb-systemd-helper") && !postinst.contains("#DEBHELPER#"),
            "unit enabled:\n{postinst}"
        );
        let postrm = std::fs::read_to_string(control.join("postrm")).unwrap();
        let purge_only = postrm.split("if [ \"$1\" = \"purge\" ]; then\n    delete=false").nth(1).unwrap_or_default();
        assert!(
            purge_only.contains(&format!("rm -rf /var/lib/{pkg}")),
            "data deleted only in the purge branch:\n{postrm}"
        );
        assert_eq!(postrm.matches("rm -rf").count(), 1, "no other deletion:\n{postrm}");
        assert!(purge_only.contains(&format!("db_input high {pkg}/purge-data")), "a purge asks:\n{postrm}");
        let templates = std::fs::read_to_string(control.join("templates")).unwrap();
        assert!(
            templates.contains(&format!("Template: {pkg}/purge-data")) && templates.contains("Default: false"),
            "{templates}"
        );
        for script in ["postinst", "postrm"] {
            run(Command::new("sh").arg("-n").arg(control.join(script)));
        }

        // Unpacked into a scratch root.
        let root = out.path().join(format!("{pkg}-root"));
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        let bin = root.join("usr/bin").join(pkg);
        assert!(bin.exists(), "{}", bin.display());
        assert!(root.join(settings).exists());
        let unit = ["lib/systemd/system", "usr/lib/systemd/system"]
            .iter()
            .map(|d| root.join(d).join(format!("{pkg}.service")))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {pkg}.service in the package"));
        let text = std::fs::read_to_string(&unit).unwrap();
        for hardening in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            &format!("StateDirectory={pkg}"),
            "PrivateTmp=yes",
            "RestrictAddressFamilies=",
            "Restart=on-failure",
        ] {
            assert!(text.contains(hardening), "{pkg}.service lacks {hardening}");
        }
        if pkg == "storesync-hub" {
            // A connection per syncing till: the default 1,024 files would stop a hub at about a thousand.
            assert!(text.contains("LimitNOFILE=65536"), "{pkg}.service keeps the default open-file limit");
        }
        // The scratch root gets the base system's units (sysinit.target and so on) a real install has; the
        // package's own files are not overwritten.
        run(Command::new("cp").arg("-rn").arg("/usr/lib/systemd/system/.").arg(unit.parent().unwrap()));
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(&unit)
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
        assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify {pkg}.service:\n{said}");

        // The packaged binary runs and, as the service, uses the system paths.
        let version = run(Command::new(&bin).arg("--version"));
        assert!(version.starts_with(pkg), "{version}");
        if pkg == "storesync-agent" {
            let paths = run(Command::new(&bin).args(["--service", "paths"]).env_remove("STATE_DIRECTORY"));
            assert!(
                paths.contains("config: /etc/storesync/agent.toml")
                    && paths.contains("data dir: /var/lib/storesync-agent"),
                "{paths}"
            );
            let paths = run(Command::new(&bin).args(["--service", "paths"]).env("STATE_DIRECTORY", "/srv/x"));
            assert!(paths.contains("data dir: /srv/x"), "systemd's StateDirectory wins: {paths}");
        }
    }
}
