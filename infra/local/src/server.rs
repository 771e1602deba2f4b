//! A small HTTP server that plays API Gateway: each request becomes a v2 event, goes to a handler,
//! and the handler's response goes back to the caller.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::Router;
use futures::future::BoxFuture;
use tokio::net::TcpListener;

/// A Lambda HTTP handler, as the local server calls it.
pub type Handler = Arc<dyn Fn(lambda_http::Request) -> BoxFuture<'static, Response> + Send + Sync>;

/// Serves `router` on `listener` until the task is dropped; its routes may read the caller's
/// address (API Gateway's `sourceIp`).
pub async fn serve(listener: TcpListener, router: Router) {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, service).await {
        tracing::warn!(%error, "the local API stopped accepting connections");
    }
}

/// An axum handler that hands each request to `handler` the way API Gateway would.
pub fn gateway(
    handler: Handler,
) -> impl Fn(ConnectInfo<SocketAddr>, Request) -> BoxFuture<'static, Response> + Clone + Send + Sync + 'static
{
    move |ConnectInfo(peer), request| Box::pin(answer(handler.clone(), request, peer))
}

async fn answer(handler: Handler, request: Request, peer: SocketAddr) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return plain(400, "could not read the request body");
    };
    // What the runtime's conversion cannot read is refused here, with its reason, instead of
    // panicking in it and dropping the connection.
    if let Err(reason) = crate::apigw::check_headers(&parts.headers) {
        return plain(400, &reason);
    }
    let target = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let event = crate::apigw::event(parts.method.as_str(), target, &parts.headers, &body, peer);
    match crate::apigw::into_request(event) {
        Ok(request) => handler(request).await,
        Err(error) if error.is::<crate::apigw::ConversionPanicked>() => plain(400, &error.to_string()),
        Err(error) => plain(500, &format!("could not build the Lambda event: {error}")),
    }
}

pub fn plain(status: u16, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(axum::body::Body::from(message.to_string()))
        .expect("a static response is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers every request with 200 and the host the handler saw.
    fn echo_host() -> Handler {
        Arc::new(|request: lambda_http::Request| -> BoxFuture<'static, Response> {
            let host = request.uri().host().unwrap_or_default().to_string();
            Box::pin(async move { Response::new(axum::body::Body::from(host)) })
        })
    }

    /// Sends `head` as written on a new connection; the whole answer ("" if the connection was
    /// dropped without one).
    async fn exchange(addr: SocketAddr, head: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut answer),
        );
        // A reset connection is the old behaviour: no answer.
        let _ = read.await.expect("the server answers or closes within 10 s");
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().fallback(gateway(echo_host()));
        (addr, tokio::spawn(serve(listener, router)))
    }

    #[tokio::test]
    async fn a_host_whose_port_is_not_a_number_gets_400_and_the_next_request_is_served() {
        let (addr, task) = server().await;
        let answer = exchange(
            addr,
            "GET /webhooks/hubspot HTTP/1.1\r\nHost: 127.0.0.1:abc\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
        assert!(answer.contains("malformed Host header"), "{answer:?}");
        let answer = exchange(
            addr,
            "GET /webhooks/hubspot HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
        assert!(answer.ends_with("127.0.0.1"), "{answer:?}");
        task.abort();
    }

    #[tokio::test]
    async fn two_host_headers_get_400_with_the_reason() {
        let (addr, task) = server().await;
        let answer = exchange(
            addr,
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nHost: 127.0.0.1:3000\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
        assert!(answer.ends_with("more than one Host header"), "{answer:?}");
        task.abort();
    }

    #[tokio::test]
    async fn a_request_without_a_host_is_served_as_localhost() {
        let (addr, task) = server().await;
        let answer = exchange(addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
        assert!(answer.ends_with("localhost"), "{answer:?}");
        task.abort();
    }
}
