//! Compiles the CSI subset in proto/csi.proto with a vendored protoc (no system protoc needed).
//! The Node service's server half is generated only with the `server` feature.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts run single-threaded, so mutating the environment is fine.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .compile_protos(&["proto/csi.proto"], &["proto"])?;
    Ok(())
}
