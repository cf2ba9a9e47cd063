//! sandbox-runtime-storage: run inside a sandbox (as root, by the control plane through envd) to
//! mount a CSI volume at a path of the sandbox.
//!
//!   sandbox-runtime-storage mount --driver <csi driver> --config <base64 NodePublishVolumeRequest>
//!   sandbox-runtime-storage unmount --driver <d> --config <c>   (accepted, does nothing: the
//!                                                              mount goes with the sandbox)
//!   sandbox-runtime-storage version
//!
//! Environment: POD_UID (the pod's uid, when the request has none), SANDBOX_STORAGE_SOCKET_DIR
//! (default /var/run/csi/sockets; the plugin socket is <dir>/<driver>/csi.sock),
//! SANDBOX_STORAGE_MOUNT_ROOT (default: the mount in /proc/mounts whose path contains
//! "mount-root"). Exit codes: 0 mounted, 64 unsafe mount path, 1 any other failure (stderr says
//! why).

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use sandbox_storage::mount::{MountEnv, mount};

#[derive(Parser)]
#[command(
    name = "sandbox-runtime-storage",
    about = "Mount a CSI volume into this sandbox"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish the volume through the driver's node plugin and link the requested path to it.
    Mount {
        #[arg(short, long)]
        driver: String,
        /// base64 of the binary protobuf CSI NodePublishVolumeRequest.
        #[arg(short, long)]
        config: String,
    },
    /// Accepted for compatibility; the mount is removed with the sandbox.
    Unmount {
        #[arg(short, long)]
        driver: String,
        #[arg(short, long)]
        config: String,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("sandbox-runtime-storage {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Unmount { .. } => ExitCode::SUCCESS,
        Command::Mount { driver, config } => {
            let started = Instant::now();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("Mount failed: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(mount(&driver, &config, &MountEnv::from_env())) {
                Ok(at) => {
                    eprintln!(
                        "Mount succeeded (costMs={}): {}",
                        started.elapsed().as_millis(),
                        at.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "Mount failed (costMs={}): {e}",
                        started.elapsed().as_millis()
                    );
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
    }
}
