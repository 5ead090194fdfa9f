//! Generates the server side of etcd's v3 gRPC API from etcd's own `.proto`
//! files (vendored in `proto/etcd`, see its README) with the same vendored
//! `protoc` as the SDK. Only server stubs: Ferry's tests talk to these
//! services through clients nobody here wrote (`etcdctl`, `etcd-client`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/etcd");
    let root = "proto/etcd";
    let files = [
        "etcd/api/etcdserverpb/rpc.proto",
        "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
    ]
    .map(|f| format!("{root}/{f}"));
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos(&files, &[root.to_string()])?;
    Ok(())
}
