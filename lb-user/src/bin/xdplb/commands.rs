//! The CLI's commands: each one request to the agent's API over its socket, and the answer
//! printed as a table or JSON.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hyper::Method;
use lb_user::{
    agent::cluster::{ClusterView, StoreStatus},
    api::{self, BackendView, StatusView, VipView},
    autoscale::live::Status as AutoscaleStatus,
    balancer::Vip,
    client::{CallError, Endpoint, call, segment},
    loader::AttachMode,
    render::{autoscale_lines, backend_line, vip_line},
};
use serde_json::json;

use crate::cli::{
    AutoscaleCommand, BackendCommand, ClusterCommand, Command, ConfigCommand, IfaceCommand, Output,
    SourceArgs, VipCommand,
};

/// `store ...`: whether the cluster store answers, and the revision applied.
fn store_line(store: &StoreStatus) -> String {
    let state = match store.unreachable_since {
        None => "up".to_owned(),
        Some(since) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!(
                "unreachable since {since} (unix time, {} s ago)",
                now.saturating_sub(since)
            )
        }
    };
    let mut line = format!(
        "store      {state}; gateway {}, applied revision {}\n",
        store.gateway, store.applied_revision
    );
    if let Some(refused) = &store.refused {
        line += &format!("           the store's config is refused here: {refused}\n");
    }
    line
}

/// A request type of the API as a request body.
fn request(body: &impl serde::Serialize) -> Option<serde_json::Value> {
    Some(serde_json::to_value(body).expect("API requests serialize to JSON"))
}

/// A backend as given on the command line: `ADDR:PORT`, or `ADDR` with the VIP's port.
fn backend_addr(vip: &Vip, address: &str) -> anyhow::Result<SocketAddr> {
    Ok(lb_user::model::parse_backend_addr(address, vip.port)?)
}

fn vip_path(vip: &Vip) -> String {
    let addr = SocketAddr::new(vip.addr, vip.port).to_string();
    format!("/v1/vips/{}/{}", vip.proto, segment(&addr))
}

pub fn print<T: serde::Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => print!("{}", table()),
    }
    Ok(())
}

pub async fn client_command(
    command: Command,
    endpoint: Endpoint<'_>,
    output: Output,
) -> anyhow::Result<()> {
    match command {
        Command::Run(_)
        | Command::Check { .. }
        | Command::Decap { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Autoscale(AutoscaleCommand::Simulate(_)) => {
            unreachable!("handled in main")
        }
        Command::Iface(IfaceCommand::List) => {
            let ifaces: Vec<String> = call(endpoint, Method::GET, "/v1/interfaces", None).await?;
            print(output, &ifaces, || {
                ifaces.iter().map(|i| format!("{i}\n")).collect()
            })
        }
        Command::Iface(IfaceCommand::Attach { name, xdp_mode }) => {
            let mode = match xdp_mode {
                AttachMode::Auto => "auto",
                AttachMode::Native => "native",
                AttachMode::Skb => "skb",
            };
            let body = request(&api::AttachIface {
                name: name.clone(),
                xdp_mode: Some(mode.to_owned()),
            });
            let ifaces: Vec<String> = call(endpoint, Method::POST, "/v1/interfaces", body).await?;
            print(output, &ifaces, || format!("attached to {name}\n"))
        }
        Command::Iface(IfaceCommand::Detach { name }) => {
            let path = format!("/v1/interfaces/{}", segment(&name));
            call::<serde_json::Value>(endpoint, Method::DELETE, &path, None).await?;
            print(output, &json!({ "detached": name }), || {
                format!("detached from {name}\n")
            })
        }
        Command::Config(ConfigCommand::Export) => {
            let (status, bytes) =
                lb_user::client::request(endpoint, Method::GET, "/v1/config", None).await?;
            if !status.is_success() {
                return Err(CallError::from_answer(status, &bytes).into());
            }
            print!("{}", String::from_utf8_lossy(&bytes));
            Ok(())
        }
        Command::Autoscale(AutoscaleCommand::Status { vip }) => {
            let views: Vec<AutoscaleStatus> = match vip {
                Some(vip) => {
                    let path = format!(
                        "/v1/autoscale{}",
                        vip_path(&vip).trim_start_matches("/v1/vips")
                    );
                    vec![call(endpoint, Method::GET, &path, None).await?]
                }
                None => call(endpoint, Method::GET, "/v1/autoscale", None).await?,
            };
            print(output, &views, || {
                if views.is_empty() {
                    return "no VIP is autoscaled\n".to_owned();
                }
                views.iter().map(autoscale_lines).collect()
            })
        }
        Command::Vip(VipCommand::Add {
            vip,
            scheduler,
            ring_size,
            sources,
            forwarding,
            health_path,
        }) => {
            let body = request(&api::AddVip {
                vip: vip.to_string(),
                scheduler: Some(scheduler.name().to_owned()),
                ring_size,
                allow: sources.allow,
                deny: sources.deny,
                source_rate_limit: sources.source_rate_limit,
                source_prefix_len: sources.source_prefix_len,
                forwarding: Some(forwarding.name().to_owned()),
                health_path,
            });
            let view: VipView = call(endpoint, Method::POST, "/v1/vips", body).await?;
            print(output, &view, || vip_line(&view))
        }
        Command::Vip(VipCommand::Del { vip }) => {
            call::<serde_json::Value>(endpoint, Method::DELETE, &vip_path(&vip), None).await?;
            print(output, &json!({ "removed": vip.to_string() }), || {
                format!("removed VIP {vip}\n")
            })
        }
        Command::Vip(VipCommand::Set {
            vip,
            scheduler,
            ring_size,
            sources,
            forwarding,
            health_path,
            health,
            notify_up,
            notify_down,
            sorry,
        }) => {
            let notify_up = notify_up
                .map(|text| crate::cli::notify_command("notify-up", &text))
                .transpose()?;
            let notify_down = notify_down
                .map(|text| crate::cli::notify_command("notify-down", &text))
                .transpose()?;
            let sorry = match sorry.as_deref() {
                None => None,
                Some("none") => Some(None),
                Some(text) => {
                    let bad = |err: lb_user::model::Error| {
                        lb_user::model::BadInput(format!("--sorry: {err}"))
                    };
                    let addr = lb_user::model::parse_backend_addr(text, vip.port).map_err(bad)?;
                    lb_user::model::check_backend_addr(&vip, addr).map_err(bad)?;
                    Some(Some(addr.to_string()))
                }
            };
            let body = request(&api::SetVip {
                notify_up,
                notify_down,
                sorry,
                health: (*health).settings(),
                scheduler: scheduler.map(|s| s.name().to_owned()),
                ring_size,
                allow: SourceArgs::replacement(&sources.allow),
                deny: SourceArgs::replacement(&sources.deny),
                source_rate_limit: sources.source_rate_limit,
                source_prefix_len: sources.source_prefix_len,
                forwarding: forwarding.map(|f| f.name().to_owned()),
                health_path,
            });
            let view: VipView = call(endpoint, Method::PATCH, &vip_path(&vip), body).await?;
            print(output, &view, || vip_line(&view))
        }
        Command::Vip(VipCommand::List) => {
            let vips: Vec<VipView> = call(endpoint, Method::GET, "/v1/vips", None).await?;
            print(output, &vips, || vips.iter().map(vip_line).collect())
        }
        Command::Vip(VipCommand::Show { vip }) => {
            let view: VipView = call(endpoint, Method::GET, &vip_path(&vip), None).await?;
            print(output, &view, || {
                vip_line(&view) + &view.backends.iter().map(backend_line).collect::<String>()
            })
        }
        Command::Backend(BackendCommand::Add {
            vip,
            address,
            weight,
        }) => {
            let address = backend_addr(&vip, &address)?;
            let body = request(&api::AddBackend {
                address: address.to_string(),
                weight: Some(weight),
                state: None,
            });
            let view: VipView = call(
                endpoint,
                Method::POST,
                &format!("{}/backends", vip_path(&vip)),
                body,
            )
            .await?;
            print(output, &view, || {
                vip_line(&view) + &view.backends.iter().map(backend_line).collect::<String>()
            })
        }
        Command::Backend(BackendCommand::Del { vip, address }) => {
            let address = backend_addr(&vip, &address)?;
            let path = format!(
                "{}/backends/{}",
                vip_path(&vip),
                segment(&address.to_string())
            );
            call::<serde_json::Value>(endpoint, Method::DELETE, &path, None).await?;
            print(output, &json!({ "removed": address }), || {
                format!("removed backend {address} from {vip}\n")
            })
        }
        Command::Backend(BackendCommand::Set {
            vip,
            address,
            weight,
            state,
        }) => {
            set_backend(
                endpoint,
                output,
                &vip,
                backend_addr(&vip, &address)?,
                api::SetBackend {
                    weight,
                    state: state.map(|s| s.to_string()),
                },
            )
            .await
        }
        Command::Backend(BackendCommand::Drain { vip, address }) => {
            set_backend(
                endpoint,
                output,
                &vip,
                backend_addr(&vip, &address)?,
                api::SetBackend {
                    weight: None,
                    state: Some("draining".to_owned()),
                },
            )
            .await
        }
        Command::Backend(BackendCommand::List { vip }) => {
            let backends: Vec<BackendView> = call(
                endpoint,
                Method::GET,
                &format!("{}/backends", vip_path(&vip)),
                None,
            )
            .await?;
            print(output, &backends, || {
                backends.iter().map(backend_line).collect()
            })
        }
        Command::Stats { watch, zero } => {
            crate::stats::command(watch, zero, endpoint, output).await
        }
        Command::Top { interval } => crate::top::run(endpoint, interval).await,
        Command::Conn(command) => crate::conn::command(command, endpoint, output).await,
        Command::Status => {
            let status: StatusView = call(endpoint, Method::GET, "/v1/status", None).await?;
            print(output, &status, || {
                let mut out = format!(
                    "version    {}\npinned in  {}\ninterfaces {}\nuptime     {} s\nVIPs       {}\nbackends   {}\n",
                    status.version,
                    status.pin_dir,
                    status.interfaces.join(" "),
                    status.uptime_secs,
                    status.vips,
                    status.backends
                );
                out += &lb_user::render::status_lines(&status);
                if let Some(store) = &status.store {
                    out += &store_line(store);
                }
                if let Some(bgp) = &status.bgp {
                    out += &lb_user::render::bgp_lines(bgp);
                }
                out
            })
        }
        Command::Cluster(ClusterCommand::Status) => {
            let view: ClusterView = call(endpoint, Method::GET, "/v1/cluster", None).await?;
            print(output, &view, || {
                let mut out = store_line(&view.store);
                out += &format!(
                    "etcd revision {}, config revision {}\n",
                    view.revision, view.config_revision
                );
                out += "GATEWAY              APPLIED  ANNOUNCED\n";
                for g in &view.gateways {
                    out += &format!(
                        "{:<20} {:>7}  {}\n",
                        g.name,
                        g.applied_revision,
                        g.announced.join(" ")
                    );
                }
                for l in &view.leaders {
                    out += &format!("autoscaler of {}: led by {}\n", l.vip, l.gateway);
                }
                out
            })
        }
        Command::Apply { file, dry_run } => {
            let text =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let path = format!("/v1/apply?dry_run={dry_run}");
            let (status, bytes) =
                lb_user::client::request(endpoint, Method::POST, &path, Some(text)).await?;
            if !status.is_success() {
                let err = CallError::from_answer(status, &bytes);
                return Err(anyhow::Error::new(err).context(file.display().to_string()));
            }
            let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let view: api::ApplyView = serde_json::from_value(answer)?;
            print(output, &view, || {
                let mut out = if view.plan.is_empty() {
                    "no changes\n".to_owned()
                } else {
                    view.plan.join("\n") + "\n"
                };
                out += if view.plan.is_empty() {
                    ""
                } else if view.applied {
                    "applied\n"
                } else {
                    "(dry run: nothing changed)\n"
                };
                out
            })
        }
        Command::Stop { detach } => {
            call::<serde_json::Value>(
                endpoint,
                Method::POST,
                "/v1/stop",
                request(&api::Stop { detach }),
            )
            .await?;
            // Wait until the agent has let go of its endpoint.
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::os::unix::net::UnixStream::connect(endpoint.socket).is_ok()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            print(
                output,
                &json!({ "stopped": true, "detached": detach }),
                || {
                    if detach {
                        "stopped and detached\n".into()
                    } else {
                        "stopped\n".into()
                    }
                },
            )
        }
    }
}

async fn set_backend(
    endpoint: Endpoint<'_>,
    output: Output,
    vip: &Vip,
    address: SocketAddr,
    body: api::SetBackend,
) -> anyhow::Result<()> {
    let path = format!(
        "{}/backends/{}",
        vip_path(vip),
        segment(&address.to_string())
    );
    let view: VipView = call(endpoint, Method::PATCH, &path, request(&body)).await?;
    print(output, &view, || {
        vip_line(&view) + &view.backends.iter().map(backend_line).collect::<String>()
    })
}
