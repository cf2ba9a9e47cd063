//! The baseline router of upstream's first design: an ext_proc gRPC server doing the same
//! lookup (sandbox id → pod IP in a 100,000-entry map) and answering with the
//! `x-envoy-original-dst-host` header for an ORIGINAL_DST cluster.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse, ProcessingRequest,
    ProcessingResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

struct Router {
    routes: Arc<HashMap<String, IpAddr>>,
}

fn header<'a>(
    req: &'a envoy_types::pb::envoy::service::ext_proc::v3::HttpHeaders,
    name: &str,
) -> Option<&'a [u8]> {
    let h = req
        .headers
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.key == name)?;
    if h.raw_value.is_empty() {
        Some(h.value.as_bytes())
    } else {
        Some(&h.raw_value)
    }
}

fn decide(routes: &HashMap<String, IpAddr>, req: ProcessingRequest) -> Option<ProcessingResponse> {
    let Some(Request::RequestHeaders(h)) = req.request else {
        return None;
    };
    let id = header(&h, "e2b-sandbox-id").and_then(|v| std::str::from_utf8(v).ok());
    let port = header(&h, "e2b-sandbox-port")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
        .unwrap_or(49983);
    let response = match id.and_then(|id| routes.get(id)) {
        Some(ip) => Reply::RequestHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation {
                    set_headers: vec![HeaderValueOption {
                        header: Some(HeaderValue {
                            key: "x-envoy-original-dst-host".into(),
                            raw_value: SocketAddr::new(*ip, port).to_string().into_bytes(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        None => Reply::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus { code: 502 }),
            body: br#"{"message":"The sandbox was not found","code":502}"#.to_vec(),
            ..Default::default()
        }),
    };
    Some(ProcessingResponse {
        response: Some(response),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl ExternalProcessor for Router {
    type ProcessStream =
        Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send + 'static>>;

    async fn process(
        &self,
        request: tonic::Request<Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, Status> {
        let routes = self.routes.clone();
        let mut input = request.into_inner();
        let output = async_stream(move |tx| async move {
            while let Some(Ok(req)) = input.next().await {
                if let Some(resp) = decide(&routes, req)
                    && tx.send(Ok(resp)).await.is_err()
                {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(output)))
    }
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<ProcessingResponse, Status>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<ProcessingResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Starts the ext_proc server on its own single-threaded runtime; returns its address.
pub fn start(routes: HashMap<String, IpAddr>) -> anyhow::Result<SocketAddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let routes = Arc::new(routes);
    std::thread::Builder::new()
        .name("ext-proc".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                // TCP_NODELAY as a production gRPC server would set it (Nagle adds ~40 ms otherwise).
                let incoming = tonic::transport::server::TcpIncoming::bind(addr)
                    .expect("bind ext_proc")
                    .with_nodelay(Some(true));
                tonic::transport::Server::builder()
                    .add_service(ExternalProcessorServer::new(Router { routes }))
                    .serve_with_incoming(incoming)
                    .await
                    .expect("ext_proc server");
            });
        })?;
    Ok(addr)
}
