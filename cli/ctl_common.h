// What every atomqctl command shares: the global flags, the calls to a
// server, the exit statuses and the output formatting.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "atomq/v1/coordinator.grpc.pb.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "common/tls.h"
#include "google/protobuf/message.h"
#include "grpcpp/grpcpp.h"

namespace atomq::ctl {

struct Globals {
  std::string coordinator;  // its serving member, for a group
  std::string participant;
  // --coordinator and --participant as given (a group's "a|b|c").
  std::string coordinator_given;
  std::string participant_given;
  uint32_t rpc_timeout_ms = 10000;
  bool json = false;
  TlsFlags tls;
  std::string token_file;    // --token_file (else env ATOMQ_TOKEN)
  std::string data_dir;      // --data_dir: read a node's data dir instead of calling it
  std::string participants;  // --participants, as given
  // --participants parsed: id -> address (its serving member, for a group).
  std::vector<std::pair<std::string, std::string>> every_participant;
};

// $ATOMQ_CONFIG, else ~/.config/atomq/atomqctl.conf (used only if it exists).
std::string DefaultConfigFile();
// Fills g->every_participant from g->participants. INVALID_ARGUMENT names
// the bad entry.
absl::Status ParseParticipants(Globals* g);
// Runs `one` at each participant of --participants in turn (as if given
// --participant), each under a "ID (ADDR)" heading; the worst exit status.
int AtEveryParticipant(const Globals& g, const std::function<int(const Globals&)>& one);

// Exit statuses: 0 success (a transaction committed), 1 a transaction
// aborted, 2 a usage error or a failed call.
constexpr int kAborted = 1;

// Prints "atomqctl: MSG" to stderr; returns 2.
int Error(const std::string& msg);
// Prints "atomqctl: WHAT failed: CODE: message"; returns 2.
int RpcError(const char* what, const grpc::Status& s);
// "CODE: message" of a failed call, for a row of a table.
std::string DescribeError(const grpc::Status& s);

// A channel to `addr` (DialChannel, common/bearer.h: TLS and the token).
std::shared_ptr<grpc::Channel> Connect(const std::string& addr);
// Of a group's members ("a|b|c", common/leader_book.h), the one whose
// health check says SERVING (its leader), asking again for up to
// --rpc_timeout_ms while none does (an election); then the first (a call
// there then fails naming the leader, or saying none is known). An address
// without '|' is returned as it is.
std::string ServingMember(const Globals& g, const std::string& members);
// The deadline of one call: --rpc_timeout_ms from now.
void SetDeadline(grpc::ClientContext* ctx, const Globals& g);

// The context of one call, with that deadline.
class CallContext : public grpc::ClientContext {
 public:
  explicit CallContext(const Globals& g) { SetDeadline(this, g); }
};

// Pages through ListTransactions at --participant until transaction `id`
// shows: its rows (prepared transaction, heuristic outcome) are in `found`,
// which is empty when the participant has neither.
grpc::Status FindParticipantTxn(const Globals& g, v1::ParticipantTxn::Stub& stub,
                                const std::string& id, bool payloads,
                                v1::ListParticipantTxnsResponse* found);

// --- output ---

void PrintJson(const google::protobuf::Message& m);

// What every command prints after its call: the failure (as RpcError), or
// the reply, as JSON with --json and else by `print`. Returns the status.
template <typename Print>
int ShowReply(const Globals& g, const char* what, const grpc::Status& s,
              const google::protobuf::Message& reply, Print print) {
  if (!s.ok()) return RpcError(what, s);
  if (g.json) {
    PrintJson(reply);
  } else {
    print();
  }
  return 0;
}
std::string StateName(v1::TxnState s);
std::string OutcomeName(v1::Outcome o);
std::string ProtocolName(v1::Protocol p);
// How long ago `since_unix_ms` was: "4.2s", "3m05s", "2h10m"; "-" if unset.
std::string Age(int64_t since_unix_ms);
// "1 2 3".
std::string JoinSequences(const google::protobuf::RepeatedField<uint64_t>& seqs);
// "ID COMMITTED" or "ID ABORTED: reason".
void PrintOutcomeLine(const v1::ExecuteResponse& resp);
// "  coordinator  ID (ADDR)", its participants and op count: the tail of a
// transaction prepared at a participant.
void PrintPreparedTail(const v1::ParticipantTxnInfo& t);

// --- op specs ---

// Adds --enqueue and --ack ops to `ops`. With `named_participant` they are
// PARTICIPANT:QUEUE=PAYLOAD and PARTICIPANT:QUEUE:SEQUENCE:LEASE_TOKEN (the
// payload is everything after the first '='); without, the participant is
// left out of the spec and empty in the op (the node fills in its own id).
// Returns an error message for a malformed spec, or when there is none
// ("`cmd` needs at least one ..."); empty if all is well.
std::string AddOps(const char* cmd, const std::vector<std::string>& enqueues,
                   const std::vector<std::string>& acks, bool named_participant,
                   google::protobuf::RepeatedPtrField<v1::Op>* ops);

// Runs a query at --participant if it is given, else at --coordinator; `cmd`
// names the command when neither is.
template <typename Arg>
int AtParticipantOrCoordinator(const Globals& g, const char* cmd,
                               int (*at_participant)(const Globals&, const Arg&),
                               int (*at_coordinator)(const Globals&, const Arg&), const Arg& arg) {
  if (!g.participant.empty()) return at_participant(g, arg);
  if (g.coordinator.empty()) {
    return Error(std::string(cmd) + " needs --coordinator=ADDR or --participant=ADDR");
  }
  return at_coordinator(g, arg);
}

// After a page that says more exist: how to get the next one.
void PrintNextPage(const std::string& cmd, const std::string& next_page_token);

// Parses a "2pc"/"3pc" choice; anything else leaves the server's default.
v1::Protocol ProtocolOf(const std::string& name);

}  // namespace atomq::ctl
