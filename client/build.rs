//! Generates the public API's types and gRPC stubs with a vendored `protoc`
//! (no system package needed), plus a file descriptor set for the server's
//! reflection service. Server stubs compile only with the `server` feature,
//! so SDK users do not build them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/ferry.proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .server_mod_attribute("ferry.v1", "#[cfg(feature = \"server\")]")
        .file_descriptor_set_path(out.join("ferry_descriptor.bin"))
        .compile_protos(&["proto/ferry.proto"], &["proto"])?;
    Ok(())
}
