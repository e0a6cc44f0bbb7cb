//! hyper-ref: the seed's Hyper microservice1 for side-by-side benchmarks.
//!
//! usage: hyper-ref --listen 127.0.0.1:PORT (--upstream http://HOST:PORT/PATH | --static FILE | --sink
//!                  | --relay HOST:PORT) [--tls-cert FILE --tls-key FILE] [--http2]
//! --sink takes any request's body as a stream and answers {"bytes":N} (the upload job); --relay forwards every
//! request to HOST:PORT with both bodies streamed, as Hyper streams them by default (the large-body proxy job).
//! Prints "hyper-ref: listening on ADDR" on stderr once bound. With a certificate it serves HTTPS through
//! rustls (TLS 1.2 and 1.3, ALPN http/1.1, session tickets). --http2 serves HTTP/2 only (`http2_only`): h2c by
//! prior knowledge, or ALPN h2 over TLS.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::{Bytes, HttpBody};
use hyper::client::HttpConnector;
use hyper::header::{HeaderValue, CONTENT_TYPE, LOCATION};
use hyper::service::{make_service_fn, service_fn};
use hyper::server::conn::Http;
use hyper::{Body, Client, Request, Response, Server, StatusCode, Uri};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

enum Mode {
    Proxy { client: Client<HttpConnector>, uri: Uri },
    Static { body: Bytes },
    Sink,
    Relay { client: Client<HttpConnector>, authority: String },
}

// The body chunk by chunk, as it arrives, counted and dropped.
async fn sink(req: Request<Body>) -> Response<Body> {
    let mut body = req.into_body();
    let mut n: u64 = 0;
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(c) => n += c.len() as u64,
            Err(_) => return Response::builder().status(StatusCode::BAD_REQUEST).body(Body::empty()).unwrap(),
        }
    }
    Response::new(Body::from(format!("{{\"bytes\":{n}}}")))
}

async fn relay(client: &Client<HttpConnector>, authority: &str, req: Request<Body>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    parts.uri = match format!("http://{authority}{path}").parse() {
        Ok(u) => u,
        Err(_) => return Response::builder().status(StatusCode::BAD_REQUEST).body(Body::empty()).unwrap(),
    };
    parts.headers.remove(hyper::header::HOST);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(up) => up,
        Err(_) => Response::builder().status(StatusCode::BAD_GATEWAY).body(Body::empty()).unwrap(),
    }
}

fn with_seed_headers(mut res: Response<Body>) -> Response<Body> {
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("Engine", HeaderValue::from_static("Rust/Hyper"));
    h.insert(LOCATION, HeaderValue::from_static("/v1/user"));
    res
}

async fn handle(mode: Arc<Mode>, req: Request<Body>) -> Result<Response<Body>, Infallible> {
    match &*mode {
        Mode::Sink => return Ok(sink(req).await),
        Mode::Relay { client, authority } => return Ok(relay(client, authority, req).await),
        _ => {}
    }
    if req.uri().path() != "/v1/user" {
        return Ok(Response::builder().status(StatusCode::NOT_FOUND).body(Body::empty()).unwrap());
    }
    let res = match &*mode {
        Mode::Static { body } => Response::new(Body::from(body.clone())),
        Mode::Proxy { client, uri } => match client.get(uri.clone()).await {
            Ok(up) => match hyper::body::to_bytes(up.into_body()).await {
                Ok(bytes) => Response::new(Body::from(bytes)),
                Err(_) => Response::builder().status(StatusCode::BAD_GATEWAY).body(Body::empty()).unwrap(),
            },
            Err(_) => Response::builder().status(StatusCode::BAD_GATEWAY).body(Body::empty()).unwrap(),
        },
        Mode::Sink | Mode::Relay { .. } => unreachable!(),
    };
    Ok(with_seed_headers(res))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut listen = "127.0.0.1:8080".to_string();
    let mut mode = None;
    let (mut cert, mut key) = (None, None);
    let mut http2 = false;
    let mut i = 1;
    while i < args.len() {
        if args[i] == "--http2" {
            http2 = true;
            i += 1;
            continue;
        }
        if args[i] == "--sink" {
            mode = Some(Mode::Sink);
            i += 1;
            continue;
        }
        match args[i].as_str() {
            "--listen" => listen = args[i + 1].clone(),
            "--upstream" => {
                mode = Some(Mode::Proxy { client: Client::new(), uri: args[i + 1].parse().expect("upstream URL") })
            }
            "--static" => {
                mode = Some(Mode::Static { body: Bytes::from(std::fs::read(&args[i + 1]).expect("static file")) })
            }
            "--relay" => mode = Some(Mode::Relay { client: Client::new(), authority: args[i + 1].clone() }),
            "--tls-cert" => cert = Some(args[i + 1].clone()),
            "--tls-key" => key = Some(args[i + 1].clone()),
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    let mode = Arc::new(mode.expect("--upstream or --static"));
    let addr: SocketAddr = listen.parse().expect("listen address");
    if let (Some(cert), Some(key)) = (cert, key) {
        return serve_tls(addr, mode, &cert, &key, http2).await;
    }
    let make = make_service_fn(move |_| {
        let mode = mode.clone();
        async move { Ok::<_, Infallible>(service_fn(move |req| handle(mode.clone(), req))) }
    });
    let server = Server::bind(&addr).http2_only(http2).serve(make);
    eprintln!("hyper-ref: listening on {}", server.local_addr());
    server.await.expect("server");
}

fn tls_config(cert: &str, key: &str, http2: bool) -> rustls::ServerConfig {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(cert).expect("cert")))
        .expect("certificate PEM")
        .into_iter()
        .map(rustls::Certificate)
        .collect();
    let key = rustls_pemfile::pkcs8_private_keys(&mut std::io::BufReader::new(std::fs::File::open(key).expect("key")))
        .expect("key PEM")
        .remove(0);
    let mut cfg = rustls::ServerConfig::builder()
        .with_safe_defaults()
        .with_no_client_auth()
        .with_single_cert(certs, rustls::PrivateKey(key))
        .expect("certificate and key");
    cfg.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    cfg.ticketer = rustls::Ticketer::new().expect("ticketer");
    cfg
}

// One task per connection: the TLS handshake, then Hyper's HTTP/1.1 (or HTTP/2) connection on the decrypted stream.
async fn serve_tls(addr: SocketAddr, mode: Arc<Mode>, cert: &str, key: &str, http2: bool) {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(cert, key, http2)));
    let listener = TcpListener::bind(addr).await.expect("bind");
    eprintln!("hyper-ref: listening on {}", listener.local_addr().expect("address"));
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => continue,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let mode = mode.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let service = service_fn(move |req| handle(mode.clone(), req));
                let mut http = Http::new();
                if http2 {
                    http.http2_only(true);
                } else {
                    http.http1_only(true);
                }
                let _ = http.serve_connection(tls, service).await;
            }
        });
    }
}
