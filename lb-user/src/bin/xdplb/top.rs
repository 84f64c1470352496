//! `xdplb top`: a full-screen live view of the agent (ratatui over crossterm): every VIP and
//! its backends with rates, active connections, health and admin state, the autoscalers'
//! desired and actual backends, the connection tables' fill and the drop counters; refreshed
//! every second, sorted by a column, quit with q.

use std::time::{Duration, Instant};

use hyper::Method;
use lb_user::{
    agent::Health,
    api::{StatsView, VipView},
    autoscale::live::Status as AutoscaleStatus,
    client::{Endpoint, call},
    rates::{Rate, si, vip_rates},
};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
};

/// The column rows are sorted by, and its key.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Sort {
    Name,
    Connections,
    Packets,
    Bits,
    NewFlows,
}

impl Sort {
    /// Every column, with its key and header.
    const ALL: [(Sort, char, &'static str); 5] = [
        (Sort::Name, 'a', "address"),
        (Sort::Connections, 'c', "connections"),
        (Sort::Packets, 'p', "packets/s"),
        (Sort::Bits, 'b', "bits/s"),
        (Sort::NewFlows, 'n', "new flows/s"),
    ];

    fn by_key(key: char) -> Option<Sort> {
        Self::ALL
            .iter()
            .find(|(_, k, _)| *k == key)
            .map(|(s, _, _)| *s)
    }

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(s, _, _)| *s == self)
            .map_or("", |(_, _, n)| n)
    }
}

/// One line of the table: a VIP, or one of its backends.
#[derive(Clone, Debug, PartialEq)]
pub struct TopLine {
    pub name: String,
    pub is_vip: bool,
    pub state: String,
    pub health: String,
    pub weight: String,
    pub connections: u64,
    pub rate: Rate,
    pub autoscale: String,
}

/// The lines of the table: each VIP, then its backends, VIPs and backends each sorted by
/// `sort` (descending, addresses ascending).
pub fn lines(
    vips: &[VipView],
    rates: &[lb_user::rates::VipRate],
    autoscale: &[AutoscaleStatus],
    sort: Sort,
) -> Vec<TopLine> {
    let key = |l: &TopLine| -> f64 {
        match sort {
            Sort::Name => 0.0,
            Sort::Connections => l.connections as f64,
            Sort::Packets => l.rate.packets_per_sec,
            Sort::Bits => l.rate.bits_per_sec,
            Sort::NewFlows => l.rate.new_flows_per_sec,
        }
    };
    let order =
        |a: &TopLine, b: &TopLine| key(b).total_cmp(&key(a)).then_with(|| a.name.cmp(&b.name));
    let mut groups: Vec<(TopLine, Vec<TopLine>)> = vips
        .iter()
        .map(|v| {
            let rate = rates.iter().find(|r| r.vip == v.vip);
            let mut backends: Vec<TopLine> = v
                .backends
                .iter()
                .map(|b| TopLine {
                    name: b.address.to_string(),
                    is_vip: false,
                    // As the operator set it (a backend the checks hold down shows its own).
                    state: b.admin_state.unwrap_or(b.state).to_string(),
                    // The checks' view, with the last failure's error.
                    health: match (b.health, &b.last_error) {
                        (Health::Healthy, _) => "ok".into(),
                        (Health::Failing, Some(error)) => format!("FAIL: {error}"),
                        (Health::Failing, None) => "FAIL".into(),
                        (Health::Unchecked, _) => "-".into(),
                    },
                    weight: b.weight.to_string(),
                    connections: u64::from(b.active_connections),
                    rate: rate
                        .and_then(|r| r.backends.iter().find(|rb| rb.address == b.address))
                        .map(|rb| rb.rate)
                        .unwrap_or_default(),
                    autoscale: String::new(),
                })
                .collect();
            backends.sort_by(order);
            let scaler = autoscale.iter().find(|a| a.vip == v.vip);
            let up = v
                .backends
                .iter()
                .filter(|b| b.health != Health::Failing)
                .count();
            let vip = TopLine {
                name: v.vip.clone(),
                is_vip: true,
                state: format!("{} {}", v.scheduler, v.forwarding),
                health: format!("{up}/{} up", v.backends.len()),
                weight: String::new(),
                connections: backends.iter().map(|b| b.connections).sum(),
                rate: rate.map(|r| r.rate).unwrap_or_default(),
                autoscale: scaler.map_or("-".into(), |a| {
                    format!("desired {} actual {}", a.desired, a.serving)
                }),
            };
            (vip, backends)
        })
        .collect();
    groups.sort_by(|a, b| order(&a.0, &b.0));
    groups
        .into_iter()
        .flat_map(|(vip, backends)| std::iter::once(vip).chain(backends))
        .collect()
}

/// What the screen shows.
struct View {
    stats: Option<StatsView>,
    autoscale: Vec<AutoscaleStatus>,
    rates: Vec<lb_user::rates::VipRate>,
    error: Option<String>,
    sort: Sort,
    at: String,
}

fn counter(list: &[(String, u64)], name: &str) -> u64 {
    list.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
}

fn draw(frame: &mut Frame, view: &View) {
    let [header, body, drops, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(5),
        Constraint::Length(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let tables = view
        .stats
        .as_ref()
        .map(|s| s.tables.as_slice())
        .unwrap_or(&[]);
    let fill = |entries: &str, capacity: &str| {
        let (e, c) = (counter(tables, entries), counter(tables, capacity));
        let pct = if c == 0 {
            0.0
        } else {
            e as f64 * 100.0 / c as f64
        };
        format!("{e}/{c} ({pct:.1}%)")
    };
    let mut head = vec![Line::from(format!(
        "xdplb top  {}  sorted by {}  conntrack {}  embryonic {}",
        view.at,
        view.sort.name(),
        fill("conntrack_entries", "conntrack_capacity"),
        fill("embryonic_entries", "embryonic_capacity"),
    ))];
    if let Some(err) = &view.error {
        head.push(Line::from(format!("error: {err}")));
    }
    frame.render_widget(Paragraph::new(head), header);

    let vips = view
        .stats
        .as_ref()
        .map(|s| s.vips.as_slice())
        .unwrap_or(&[]);
    let rows: Vec<Row> = lines(vips, &view.rates, &view.autoscale, view.sort)
        .into_iter()
        .map(|l| {
            let name = if l.is_vip {
                format!("VIP {}", l.name)
            } else {
                format!("  {}", l.name)
            };
            let row = Row::new(vec![
                name,
                l.state,
                l.health,
                l.weight,
                l.connections.to_string(),
                si(l.rate.packets_per_sec),
                si(l.rate.bits_per_sec),
                si(l.rate.new_flows_per_sec),
                l.autoscale,
            ]);
            if l.is_vip {
                row.style(Style::default().add_modifier(Modifier::BOLD))
            } else {
                row
            }
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(34),
            Constraint::Length(16),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Length(11),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(11),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(vec![
            "VIP / BACKEND",
            "STATE",
            "HEALTH",
            "WEIGHT",
            "CONNECTIONS",
            "PACKETS/S",
            "BITS/S",
            "NEW FLOWS/S",
            "AUTOSCALE",
        ])
        .style(Style::default().add_modifier(Modifier::REVERSED)),
    )
    .block(Block::bordered().title("VIPs and backends"));
    frame.render_widget(table, body);

    let dropped: Vec<String> = view
        .stats
        .as_ref()
        .map(|s| {
            s.counters
                .iter()
                .filter(|(n, v)| n.starts_with("drop") && *v > 0)
                .map(|(n, v)| format!("{n} {v}"))
                .collect()
        })
        .unwrap_or_default();
    let drops_text = if dropped.is_empty() {
        "no drops".to_owned()
    } else {
        dropped.join("  ")
    };
    frame.render_widget(
        Paragraph::new(drops_text)
            .wrap(ratatui::widgets::Wrap { trim: true })
            .block(Block::bordered().title("drops")),
        drops,
    );
    let keys: Vec<String> = Sort::ALL
        .iter()
        .map(|(_, k, n)| format!("{k} {n}"))
        .collect();
    frame.render_widget(
        Paragraph::new(format!("sort: {}   q quit", keys.join("  "))),
        footer,
    );
}

/// Reads what the screen shows; an error is shown, not fatal (the agent may be restarting).
async fn refresh(endpoint: Endpoint<'_>, view: &mut View, last: &mut Option<(Instant, StatsView)>) {
    let stats = call::<StatsView>(endpoint, Method::GET, "/v1/stats", None).await;
    let autoscale =
        call::<Vec<AutoscaleStatus>>(endpoint, Method::GET, "/v1/autoscale", None).await;
    view.at = format!("{:.0}", jiff::Timestamp::now());
    match stats {
        Ok(stats) => {
            let now = Instant::now();
            view.rates = match last {
                Some((then, old)) => vip_rates(
                    &old.vips,
                    &stats.vips,
                    now.duration_since(*then).as_secs_f64(),
                ),
                None => Vec::new(),
            };
            *last = Some((now, stats.clone()));
            view.stats = Some(stats);
            view.error = None;
        }
        Err(err) => view.error = Some(format!("{err:#}")),
    }
    if let Ok(autoscale) = autoscale {
        view.autoscale = autoscale;
    }
}

pub async fn run(endpoint: Endpoint<'_>, interval: f64) -> anyhow::Result<()> {
    let period = Duration::from_secs_f64(interval);
    // The agent first: if it cannot be reached, that is said on the plain terminal, with its
    // exit code (3), rather than on a screen that closes at once.
    call::<StatsView>(endpoint, Method::GET, "/v1/stats", None).await?;
    let mut terminal = ratatui::try_init().map_err(|err| {
        anyhow::anyhow!("xdplb top needs a terminal ({err}); `xdplb stats --watch 1` prints frames")
    })?;
    let result = async {
        let mut view = View {
            stats: None,
            autoscale: Vec::new(),
            rates: Vec::new(),
            error: None,
            sort: Sort::Packets,
            at: String::new(),
        };
        let mut last = None;
        loop {
            refresh(endpoint, &mut view, &mut last).await;
            terminal.draw(|f| draw(f, &view))?;
            let next = Instant::now() + period;
            // Keys until the next refresh; a sort key redraws at once.
            while let Some(wait) = next.checked_duration_since(Instant::now()) {
                if !event::poll(wait)? {
                    break;
                }
                if let Event::Key(key) = event::read()?
                    && key.kind == KeyEventKind::Press
                {
                    match key.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Char(c) => {
                            if let Some(sort) = Sort::by_key(c) {
                                view.sort = sort;
                                terminal.draw(|f| draw(f, &view))?;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    .await;
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_user::rates::{BackendRate, VipRate};

    fn vip(name: &str, backends: &[(&str, u32)]) -> VipView {
        serde_json::from_value(serde_json::json!({
            "vip": name,
            "address": name.split('/').next().unwrap(),
            "protocol": "tcp",
            "scheduler": "maglev",
            "ring_size": 65537,
            "packets": 0, "bytes": 0, "new_flows": 0,
            "backends": backends.iter().enumerate().map(|(i, (a, active))| serde_json::json!({
                "address": a, "weight": 1, "state": "up", "id": i,
                "active_connections": active, "drained": false, "healthy": true, "health": "healthy",
                "packets": 0, "bytes": 0, "new_flows": 0,
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn lines_are_vips_then_their_backends_sorted_by_the_column() {
        let vips = [
            vip(
                "198.19.0.1:80/tcp",
                &[("10.1.0.2:8080", 1), ("10.2.0.2:8080", 5)],
            ),
            vip("198.19.0.2:80/tcp", &[("10.3.0.2:8080", 9)]),
        ];
        let rate = |p: f64| Rate {
            packets_per_sec: p,
            bits_per_sec: p * 800.0,
            new_flows_per_sec: 0.0,
        };
        let rates = [VipRate {
            vip: "198.19.0.1:80/tcp".into(),
            rate: rate(30.0),
            backends: vec![
                BackendRate {
                    address: "10.1.0.2:8080".parse().unwrap(),
                    rate: rate(20.0),
                },
                BackendRate {
                    address: "10.2.0.2:8080".parse().unwrap(),
                    rate: rate(10.0),
                },
            ],
        }];
        let names = |sort| -> Vec<String> {
            lines(&vips, &rates, &[], sort)
                .into_iter()
                .map(|l| l.name)
                .collect()
        };
        assert_eq!(
            names(Sort::Packets),
            [
                "198.19.0.1:80/tcp",
                "10.1.0.2:8080",
                "10.2.0.2:8080",
                "198.19.0.2:80/tcp",
                "10.3.0.2:8080"
            ]
        );
        assert_eq!(
            names(Sort::Connections),
            [
                "198.19.0.2:80/tcp",
                "10.3.0.2:8080",
                "198.19.0.1:80/tcp",
                "10.2.0.2:8080",
                "10.1.0.2:8080"
            ]
        );
        let first = &lines(&vips, &rates, &[], Sort::Name)[0];
        assert_eq!((first.connections, first.health.as_str()), (6, "2/2 up"));
    }

    #[test]
    fn every_sort_key_is_found() {
        for (sort, key, _) in Sort::ALL {
            assert_eq!(Sort::by_key(key), Some(sort));
        }
        assert_eq!(Sort::by_key('z'), None);
    }
}
