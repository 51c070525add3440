//! Generates the x86_64 syscall name → number table the seccomp compiler needs, from the
//! kernel UAPI header (Debian's linux-libc-dev, pulled in by build-essential).

use std::fmt::Write;

const HEADER: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={HEADER}");
    let text = std::fs::read_to_string(HEADER)
        .map_err(|e| format!("{HEADER}: {e} (apt-get install linux-libc-dev)"))?;
    let mut table = String::from(
        "/// x86_64 syscalls by name (generated from unistd_64.h).\npub const SYSCALLS: &[(&str, i64)] = &[\n",
    );
    let mut count = 0;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("#define") {
            continue;
        }
        let (Some(name), Some(nr)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse::<i64>()) {
            writeln!(table, "    ({name:?}, {nr}),")?;
            count += 1;
        }
    }
    if count < 300 {
        return Err(format!("only {count} syscalls found in {HEADER}").into());
    }
    table.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("syscalls.rs");
    std::fs::write(out, table)?;
    Ok(())
}
