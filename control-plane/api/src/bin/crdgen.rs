//! Writes the CRD YAML generated from the API types into the controller chart.
//! Usage: `cargo run -p sandbox-api --bin crdgen [OUT_DIR]` (default
//! `charts/kruise-agents-sandbox-controller/crds` relative to the repository root).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../charts/kruise-agents-sandbox-controller/crds")
        });
    std::fs::create_dir_all(&out)?;
    for crd in sandbox_api::all_crds() {
        let path = out.join(sandbox_api::crd_file_name(&crd));
        std::fs::write(&path, sandbox_api::crd_yaml(&crd))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
