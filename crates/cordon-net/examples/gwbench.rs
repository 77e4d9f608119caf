//! Load tools for `bench/gateway` (not part of cordon itself).
//!
//! ```text
//! gwbench certs --dir D --name N                   D/ca.pem, D/cert.pem, D/key.pem (leaf for N)
//! gwbench upstream --cert C --key K [--port P]      HTTPS server: 200 + 64 bytes for every request
//! gwbench load --url URL [--conns N] [--seconds S] [--ca FILE] [--proxy HOST:PORT] [--connect IP:PORT]
//!                                                   keep-alive HTTP/1.1 load; prints JSON
//! gwbench sink [--port P]                           TCP sink; prints the port
//! gwbench blast --addr HOST:PORT [--mib N]          sends N MiB, prints JSON with MiB/s
//! ```
//!
//! `load` sends requests back to back on each of N connections and reports
//! requests per second and latency percentiles. `--proxy` goes through an
//! HTTP CONNECT proxy (mitmproxy); `--connect` dials that address instead of
//! resolving the URL's host (the URL's host still names SNI and Host).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = match args.get(1).map(String::as_str) {
        Some("upstream") => rt.block_on(upstream(&args)),
        Some("load") => rt.block_on(load(&args)),
        Some("sink") => rt.block_on(sink(&args)),
        Some("blast") => rt.block_on(blast(&args)),
        Some("certs") => certs(&args),
        _ => Err("usage: gwbench upstream|load|sink|blast ... (see the source)".into()),
    };
    if let Err(e) = result {
        eprintln!("gwbench: {e}");
        std::process::exit(1);
    }
}

type Res = Result<(), String>;

fn certs(args: &[String]) -> Res {
    let dir = std::path::PathBuf::from(arg(args, "--dir").ok_or("--dir")?);
    let name = arg(args, "--name").ok_or("--name")?;
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (mitmproxy) takes a leaf whose issuer equals
    // its subject for self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gwbench CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(e)?;
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let mut leaf_params = rcgen::CertificateParams::new(vec![name.clone()]).map_err(e)?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let leaf = leaf_params.signed_by(&key, &ca).map_err(e)?;
    let write =
        |f: &str, text: String| std::fs::write(dir.join(f), text).map_err(|e| e.to_string());
    write("ca.pem", ca.pem())?;
    write("cert.pem", leaf.pem())?;
    write("key.pem", key.serialize_pem())
}

async fn upstream(args: &[String]) -> Res {
    use rustls_pki_types::pem::PemObject;
    let cert = arg(args, "--cert").ok_or("--cert")?;
    let key = arg(args, "--key").ok_or("--key")?;
    let port: u16 = arg(args, "--port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&cert)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&key).map_err(|e| e.to_string())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "{}",
        listener.local_addr().map_err(|e| e.to_string())?.port()
    );
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                    Bytes::from_static(
                        b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                    ),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn client_config(ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
            roots
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
    } else {
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

async fn connect(
    host: &str,
    port: u16,
    proxy: Option<&str>,
    direct: Option<SocketAddr>,
) -> Result<TcpStream, String> {
    let mut tcp = match (proxy, direct) {
        (Some(p), _) => TcpStream::connect(p).await,
        (None, Some(a)) => TcpStream::connect(a).await,
        (None, None) => TcpStream::connect((host, port)).await,
    }
    .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    if proxy.is_some() {
        let target = direct.map_or_else(|| format!("{host}:{port}"), |a| a.to_string());
        let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await.map_err(|e| e.to_string())? == 0 || buf.len() > 8192 {
                return Err("proxy closed during CONNECT".into());
            }
            buf.push(byte[0]);
        }
        if !buf.starts_with(b"HTTP/1.1 200") && !buf.starts_with(b"HTTP/1.0 200") {
            return Err(format!("proxy refused: {}", String::from_utf8_lossy(&buf)));
        }
    }
    Ok(tcp)
}

async fn load(args: &[String]) -> Res {
    let url: hyper::Uri = arg(args, "--url")
        .ok_or("--url")?
        .parse()
        .map_err(|e| format!("--url: {e}"))?;
    let conns: usize = arg(args, "--conns")
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let seconds: f64 = arg(args, "--seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    let proxy = arg(args, "--proxy");
    let direct: Option<SocketAddr> = arg(args, "--connect").and_then(|v| v.parse().ok());
    let host = url.host().ok_or("the URL needs a host")?.to_string();
    let port = url.port_u16().unwrap_or(443);
    let tls = tokio_rustls::TlsConnector::from(client_config(arg(args, "--ca").as_deref())?);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (tls, host, url, proxy) = (tls.clone(), host.clone(), url.clone(), proxy.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = connect(&host, port, proxy.as_deref(), direct).await?;
            let name =
                rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let req = hyper::Request::get(url.path())
                    .header("host", &host)
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let t = Instant::now();
                let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("status {status}"));
                }
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, String>(lat)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": all.len(),
            "rps": all.len() as f64 / elapsed,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "conns": conns,
        })
    );
    Ok(())
}

async fn sink(args: &[String]) -> Res {
    let port: u16 = arg(args, "--port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "{}",
        listener.local_addr().map_err(|e| e.to_string())?.port()
    );
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            // The byte count goes back so the sender knows all of it arrived.
            let _ = tcp.write_all(total.to_string().as_bytes()).await;
        });
    }
}

async fn blast(args: &[String]) -> Res {
    let addr = arg(args, "--addr").ok_or("--addr")?;
    let mib: u64 = arg(args, "--mib")
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let mut tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let buf = vec![0x5au8; 256 * 1024];
    let total = mib << 20;
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(buf.len() as u64) as usize;
        tcp.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    tcp.shutdown().await.map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    if answer.trim() != total.to_string() {
        return Err(format!("the sink counted {answer:?} bytes, not {total}"));
    }
    println!(
        "{}",
        serde_json::json!({ "bytes": total, "seconds": secs, "mib_per_s": mib as f64 / secs })
    );
    Ok(())
}
