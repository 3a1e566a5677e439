// atomqctl: run transactions, inspect in-doubt ones, and work with queues.
// Exit status: 0 success (a transaction committed), 1 a transaction aborted,
// 2 a usage error or a failed call (the gRPC status is printed).
#include "CLI/CLI.hpp"
#include "atomq_version.h"
#include "cli/commands.h"
#include "cli/ctl_common.h"
#include "common/bearer.h"

int main(int argc, char** argv) {
  using namespace atomq::ctl;  // NOLINT: the tool's own namespace
  CLI::App app{"atomqctl: run and inspect atomq transactions and queues"};
  app.set_version_flag("--version", ATOMQ_VERSION);
  app.require_subcommand(1);
  // Global flags also after the subcommand (`queue list --json`): every
  // subcommand added below inherits this and hands them up.
  app.fallthrough();
  Globals g;
  // Flags may come from a file, as rabbitmqadmin.conf or a PGSERVICEFILE:
  // `coordinator = "127.0.0.1:7000"` lines (TOML), one per global flag.
  app.set_config("--config", DefaultConfigFile(),
                 "file of global flags (NAME = \"VALUE\" lines); default: env ATOMQ_CONFIG, else "
                 "~/.config/atomq/atomqctl.conf if it exists");
  app.add_option("--coordinator", g.coordinator,
                 "coordinator address host:port, or a group's members host:port|host:port|...")
      ->envname("ATOMQ_COORDINATOR");
  app.add_option("--participant", g.participant,
                 "participant address host:port; a group of replicas as host:port|host:port|... "
                 "(its leader is found)")
      ->envname("ATOMQ_PARTICIPANT");
  app.add_option("--participants", g.participants,
                 "every participant, ID=ADDR,ID=ADDR,... (an ADDR may be a group's a|b|c): txn "
                 "list and queue list answer for all of them")
      ->envname("ATOMQ_PARTICIPANTS");
  app.add_option("--rpc_timeout_ms", g.rpc_timeout_ms, "deadline of each call")
      ->capture_default_str();
  app.add_flag("--json", g.json, "print JSON instead of a table");
  app.add_option("--data_dir", g.data_dir,
                 "txn list and queue list: read this node's data dir (stopped, or running: "
                 "read-only) instead of calling a server");
  atomq::AddTlsFlags(app, &g.tls, /*server=*/false);
  app.add_option("--token_file", g.token_file,
                 "file holding the bearer token sent with every call (default: env ATOMQ_TOKEN)");
  // Before any command runs: refuse an unasked-for plaintext connection.
  app.parse_complete_callback([&app, &g] {
    // The offline commands call no server.
    for (const char* offline : {"verify", "backup", "restore", "completion"}) {
      if (app.got_subcommand(offline)) return;
    }
    if (!g.data_dir.empty()) return;
    absl::Status st = atomq::CheckTlsFlags(g.tls, /*server=*/false);
    if (!st.ok()) throw CLI::ValidationError("TLS", std::string(st.message()));
    atomq::SetDialCredentials(atomq::ChannelCredentials(g.tls));
    st = atomq::SetDialTokenFrom(g.token_file, /*from_env=*/true);
    if (!st.ok()) throw CLI::ValidationError("--token_file", std::string(st.message()));
    g.participant_given = g.participant;
    g.coordinator_given = g.coordinator;
    g.participant = ServingMember(g, g.participant);
    g.coordinator = ServingMember(g, g.coordinator);
    if (absl::Status pst = ParseParticipants(&g); !pst.ok()) {
      throw CLI::ValidationError("--participants", std::string(pst.message()));
    }
  });

  int rc = 0;
  CLI::App* txn = app.add_subcommand("txn", "transactions");
  txn->require_subcommand(1);
  AddTxnCommands(txn, g, &rc);
  AddInteractiveTxnCommands(txn, g, &rc);
  CLI::App* queue = app.add_subcommand("queue", "queues on a participant");
  queue->require_subcommand(1);
  AddQueueCommands(queue, g, &rc);
  CLI::App* cluster = app.add_subcommand("cluster", "replica groups");
  cluster->require_subcommand(1);
  AddClusterCommands(cluster, g, &rc);
  AddDataDirCommands(app, &rc);
  AddCompletionCommand(app, &rc);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  return rc;
}
