use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = pve_nvidia_hook::cli::parse();
    match pve_nvidia_hook::run(cli) {
        Ok(code) => code,
        Err(err) => {
            pve_nvidia_hook::report_error(&err);
            ExitCode::from(if pve_nvidia_hook::is_usage(&err) {
                2
            } else {
                1
            })
        }
    }
}
