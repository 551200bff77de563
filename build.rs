//! Compiles `proto/` into the gRPC service code. `protoc` comes from the protoc-bin-vendored crate,
//! so the build needs nothing installed by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sluice_descriptor.bin"))
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/sluice/v1/streams.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
