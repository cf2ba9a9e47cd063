//! A CSI node plugin for the simulated node (`NodeSimConfig::csi_drivers`): what a vendor's
//! csi-sidecar is on a real node, so that dynamic mounts (`sandbox-runtime-storage mount`, run in
//! a sandbox by the manager) go through a real CSI gRPC call here.
//!
//! A simulated pod is a process on this machine, so a "volume" is a directory of it: the
//! volume's `path` attribute (the PersistentVolume's `volumeAttributes.path`, narrowed by a
//! subPath) must be an existing absolute directory, and publishing makes the target path a
//! symbolic link to it (no privileges, no mount table). Read-only requests are accepted but not
//! enforced. The sockets and the mount root are under the node's work root ([`dirs`]; kube-cluster
//! prints them as `NODE_SIM_CSI_SOCKET_DIR` and `NODE_SIM_CSI_MOUNT_ROOT`): the mount CLI in a
//! simulated pod is pointed at them (`SANDBOX_STORAGE_SOCKET_DIR`, `SANDBOX_STORAGE_MOUNT_ROOT`)
//! by whoever runs it, where a real sandbox image has the default layout.

use std::path::{Path, PathBuf};

use sandbox_storage::csi::node_server::{Node, NodeServer};
use sandbox_storage::csi::{
    NodePublishVolumeRequest, NodePublishVolumeResponse, NodeUnpublishVolumeRequest,
    NodeUnpublishVolumeResponse,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// The plugin sockets (`<dir>/<driver>/csi.sock`) and mount root under the node's work root.
pub fn dirs(root: &Path) -> (PathBuf, PathBuf) {
    (root.join("csi/sockets"), root.join("csi/mount-root"))
}

struct DirectoryPlugin {
    driver: String,
}

#[tonic::async_trait]
impl Node for DirectoryPlugin {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let source = req
            .volume_context
            .get("path")
            .map(PathBuf::from)
            .ok_or_else(|| Status::invalid_argument("volume attribute \"path\" is required"))?;
        if !source.is_absolute() || !source.is_dir() {
            return Err(Status::not_found(format!(
                "volume path {} is not an existing directory",
                source.display()
            )));
        }
        let target = PathBuf::from(&req.target_path);
        if target.as_os_str().is_empty() {
            return Err(Status::invalid_argument("target_path is required"));
        }
        if let Ok(existing) = std::fs::read_link(&target) {
            if existing == source {
                return Ok(Response::new(NodePublishVolumeResponse {}));
            }
            return Err(Status::already_exists(format!(
                "{} is published from {}",
                target.display(),
                existing.display()
            )));
        }
        std::os::unix::fs::symlink(&source, &target)
            .map_err(|e| Status::internal(format!("publish {}: {e}", target.display())))?;
        tracing::info!(driver = %self.driver, volume = %req.volume_id, target = %target.display(), source = %source.display(), "volume published");
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let target = PathBuf::from(request.into_inner().target_path);
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&target)
                .map_err(|e| Status::internal(format!("unpublish {}: {e}", target.display())))?,
            _ => {}
        }
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }
}

/// Serves `driver` at `<root>/csi/sockets/<driver>/csi.sock` until the runtime stops.
pub async fn serve(root: PathBuf, driver: String) {
    let (sockets, mount_root) = dirs(&root);
    let socket = sandbox_storage::client::socket_path(&sockets, &driver);
    let listener = (|| {
        std::fs::create_dir_all(&mount_root)?;
        std::fs::create_dir_all(socket.parent().unwrap_or(&sockets))?;
        let _ = std::fs::remove_file(&socket);
        tokio::net::UnixListener::bind(&socket)
    })();
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%driver, socket = %socket.display(), error = %e, "CSI plugin not started");
            return;
        }
    };
    tracing::info!(%driver, socket = %socket.display(), "CSI node plugin serving");
    let plugin = DirectoryPlugin {
        driver: driver.clone(),
    };
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(NodeServer::new(plugin))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
    {
        tracing::error!(%driver, error = %e, "CSI plugin stopped");
    }
}
