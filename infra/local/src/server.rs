//! A small HTTP server that plays API Gateway: each request becomes a v2 event, goes to a handler,
//! and the handler's response goes back to the caller.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A Lambda HTTP handler, as the local server calls it.
pub type Handler = Arc<
    dyn Fn(lambda_http::Request) -> BoxFuture<'static, lambda_http::Response<lambda_http::Body>>
        + Send
        + Sync,
>;

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(handler.clone(), request, peer));
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "connection closed with an error");
            }
        });
    }
}

async fn answer(
    handler: Handler,
    request: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(plain(400, "could not read the request body")),
    };
    // What the runtime's conversion cannot read is refused here, with its reason, instead of
    // panicking in it and dropping the connection.
    if let Err(reason) = crate::apigw::check_headers(&parts.headers) {
        return Ok(plain(400, &reason));
    }
    let target = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let event = crate::apigw::event(parts.method.as_str(), target, &parts.headers, &body, peer);
    let request = match crate::apigw::into_request(event) {
        Ok(request) => request,
        Err(error) if error.is::<crate::apigw::ConversionPanicked>() => {
            return Ok(plain(400, &error.to_string()))
        }
        Err(error) => return Ok(plain(500, &format!("could not build the Lambda event: {error}"))),
    };
    let response = handler(request).await;
    let (parts, body) = response.into_parts();
    let bytes = match body {
        lambda_http::Body::Text(text) => Bytes::from(text),
        lambda_http::Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    Ok(hyper::Response::from_parts(parts, Full::new(bytes)))
}

fn plain(status: u16, message: &str) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(message.to_string())))
        .expect("a static response is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers every request with 200 and the host the handler saw.
    fn echo_host() -> Handler {
        Arc::new(
            |request: lambda_http::Request| -> BoxFuture<'static, lambda_http::Response<lambda_http::Body>> {
                let host = request.uri().host().unwrap_or_default().to_string();
                Box::pin(async move { lambda_http::Response::new(lambda_http::Body::Text(host)) })
            },
        )
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
        (addr, tokio::spawn(serve(listener, echo_host())))
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
