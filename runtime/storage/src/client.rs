//! The CSI Node service over a node plugin's unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};

use crate::csi::NodePublishVolumeRequest;
use crate::csi::node_client::NodeClient;

/// `<dir>/<driver>/csi.sock`.
pub fn socket_path(dir: &Path, driver: &str) -> PathBuf {
    dir.join(driver).join("csi.sock")
}

async fn connect(
    socket: &Path,
    timeout: Duration,
) -> Result<NodeClient<tonic::transport::Channel>, String> {
    let path = socket.to_path_buf();
    // The URI is required by the API and ignored by the connector.
    let channel = Endpoint::try_from("http://[::1]:50051")
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(|e| format!("{e}: {}", source_chain(&e)))?;
    Ok(NodeClient::new(channel))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// `NodePublishVolume` on the plugin at `socket`.
pub async fn publish(
    socket: &Path,
    req: NodePublishVolumeRequest,
    timeout: Duration,
) -> Result<(), String> {
    let mut client = connect(socket, timeout)
        .await
        .map_err(|e| format!("create CSI client for {}: {e}", socket.display()))?;
    client
        .node_publish_volume(req)
        .await
        .map(|_| ())
        .map_err(|s| format!("NodePublishVolume failed: {}", s.message()))
}
