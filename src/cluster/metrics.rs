//! What a cluster node counts: leases renewed and lost, commands forwarded and how long the
//! owner took to answer them (`/metrics`), and whether NATS is connected (`/healthz`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub claims: AtomicU64,
    pub leases_renewed: AtomicU64,
    pub leases_lost: AtomicU64,
    pub leases_released: AtomicU64,
    pub forwarded: AtomicU64,
    pub forward_micros: AtomicU64,
    /// Commands this node answered for others.
    pub served: AtomicU64,
    /// Events a relay read from the store to fill a gap.
    pub gap_events: AtomicU64,
    /// Conversations this node gave up for another node's synchronous call.
    pub handed_over: AtomicU64,
}

impl ClusterMetrics {
    pub(super) fn forwarded(&self, took: Duration) {
        self.forwarded.fetch_add(1, Relaxed);
        self.forward_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Prometheus text for these counters, labelled with the node.
    pub fn render(&self, node: &str, owned: usize, connected: bool, out: &mut String) {
        use std::fmt::Write;
        let l = format!("node=\"{node}\"");
        let counters = [
            (
                "parley_cluster_claims_total",
                "Conversations claimed by this node",
                &self.claims,
            ),
            (
                "parley_cluster_leases_renewed_total",
                "Lease renewals",
                &self.leases_renewed,
            ),
            (
                "parley_cluster_leases_lost_total",
                "Leases found lost at renewal or refused by the fence",
                &self.leases_lost,
            ),
            (
                "parley_cluster_leases_released_total",
                "Leases given up (idle actor, shutdown)",
                &self.leases_released,
            ),
            (
                "parley_cluster_forwarded_commands_total",
                "Commands forwarded to the owner node",
                &self.forwarded,
            ),
            (
                "parley_cluster_served_commands_total",
                "Forwarded commands this node answered as owner",
                &self.served,
            ),
            (
                "parley_cluster_handed_over_total",
                "Conversations given up to another node for its synchronous call (invoke)",
                &self.handed_over,
            ),
            (
                "parley_cluster_gap_events_total",
                "Events relayed from the store to fill a gap",
                &self.gap_events,
            ),
        ];
        let _ = writeln!(out, "# HELP parley_cluster_node This node's id\n# TYPE parley_cluster_node gauge\nparley_cluster_node{{{l}}} 1");
        let _ = writeln!(out, "# HELP parley_cluster_owned_conversations Conversations this node owns\n# TYPE parley_cluster_owned_conversations gauge\nparley_cluster_owned_conversations{{{l}}} {owned}");
        let _ = writeln!(out, "# HELP parley_cluster_nats_connected Whether NATS is connected\n# TYPE parley_cluster_nats_connected gauge\nparley_cluster_nats_connected{{{l}}} {}", u8::from(connected));
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{l}}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP parley_cluster_forward_seconds Time to forward a command and get the owner's answer\n# TYPE parley_cluster_forward_seconds summary\nparley_cluster_forward_seconds_sum{{{l}}} {}\nparley_cluster_forward_seconds_count{{{l}}} {}",
            self.forward_micros.load(Relaxed) as f64 / 1e6,
            self.forwarded.load(Relaxed)
        );
    }
}
