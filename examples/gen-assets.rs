//! Generates the man pages and the bash and zsh completions from the clap
//! definitions, so that they never drift from the binary. debian/rules runs
//! it at package build time: `cargo run --example gen-assets -- DIR`.

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;
use pve_nvidia_hook::cli::Cli;

fn main() -> std::io::Result<()> {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen-assets OUTPUT-DIR");
        std::process::exit(2);
    };
    std::fs::create_dir_all(&out)?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(out.join("pve-nvidia-hook.1"), page)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("pve-nvidia-hook-{}", sub.get_name());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone().name(&name)).render(&mut page)?;
        std::fs::write(out.join(format!("{name}.1")), page)?;
    }
    for shell in [Shell::Bash, Shell::Zsh] {
        clap_complete::generate_to(shell, &mut cmd, "pve-nvidia-hook", &out)?;
    }
    Ok(())
}
