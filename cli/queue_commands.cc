// queue create, delete, purge, list, info, send, receive, ack and nack: calls on
// one participant's Queue service.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "atomq/v1/console.pb.h"
#include "atomq/v1/records.pb.h"
#include "cli/commands.h"
#include "cli/data_dir.h"
#include "common/codec.h"
#include "common/data_file.h"
#include "participant/core/schema.h"

namespace atomq::ctl {
namespace {

// Arguments of every `queue` subcommand.
struct QueueArgs {
  std::string name;
  uint32_t max = 1;
  uint32_t lease_ms = 0;
  std::string wait;  // a duration: "500ms", "5s", "1m"; a bare number is ms
  bool no_ack = false;
  bool auto_ack = false;
  bool peek = false;
  uint32_t max_deliveries = 0;
  std::string dead_letter_queue;
  std::string payload;
  std::vector<std::string> headers;  // KEY=VALUE
  std::string producer_id;
  uint64_t producer_sequence = 0;
  uint64_t sequence = 0;
  std::string token;
  bool dead_letter = false;
  std::string reason;
};

// What one queue command gets: the stub and a context whose deadline is
// set (but for receive, which sets its own).
struct QueueCall {
  const Globals& g;
  const QueueArgs& a;
  v1::Queue::Stub& stub;
  grpc::ClientContext& ctx;
};

using QueueCommand = int (*)(QueueCall&);

bool ParseWait(const std::string& s, uint32_t* ms) {
  if (s.empty()) {
    *ms = 0;
    return true;
  }
  if (absl::SimpleAtoi(s, ms)) return true;
  absl::Duration d;
  if (!absl::ParseDuration(s, &d) || d < absl::ZeroDuration() || d > absl::Hours(1)) return false;
  *ms = static_cast<uint32_t>(absl::ToInt64Milliseconds(d));
  return true;
}

// Names the leased message of an Ack or Nack.
template <typename Request>
void SetLeased(const std::string& queue, uint64_t sequence, const std::string& token,
               Request* req) {
  req->set_queue(queue);
  req->set_sequence(sequence);
  req->set_lease_token(token);
}

int QueueCreate(QueueCall& c) {
  v1::CreateQueueRequest req;
  req.set_name(c.a.name);
  req.set_max_deliveries(c.a.max_deliveries);
  req.set_dead_letter_queue(c.a.dead_letter_queue);
  v1::CreateQueueResponse resp;
  grpc::Status s = c.stub.CreateQueue(&c.ctx, req, &resp);
  return ShowReply(c.g, "CreateQueue", s, resp,
                   [&] { std::printf("queue %s created\n", c.a.name.c_str()); });
}

int QueueDelete(QueueCall& c) {
  v1::DeleteQueueRequest req;
  req.set_name(c.a.name);
  v1::DeleteQueueResponse resp;
  grpc::Status s = c.stub.DeleteQueue(&c.ctx, req, &resp);
  return ShowReply(c.g, "DeleteQueue", s, resp,
                   [&] { std::printf("queue %s deleted\n", c.a.name.c_str()); });
}

int QueuePurge(QueueCall& c) {
  v1::PurgeQueueRequest req;
  req.set_name(c.a.name);
  v1::PurgeQueueResponse resp;
  grpc::Status s = c.stub.PurgeQueue(&c.ctx, req, &resp);
  return ShowReply(c.g, "PurgeQueue", s, resp, [&] {
    std::printf("queue %s purged: %llu ready messages removed\n", c.a.name.c_str(),
                static_cast<unsigned long long>(resp.purged()));
  });
}

// With `node`, a NODE column first (queue list --participants).
void PrintQueueHeader(bool node) {
  if (node) std::printf("%-10s ", "NODE");
  std::printf("%-30s %10s %8s %8s %8s %8s %s\n", "QUEUE", "VERSION", "READY", "LEASED", "IN-TXN",
              "MAX-DEL", "DEAD-LETTER");
}

void PrintQueueRow(const v1::QueueInfo& q, const std::string* node) {
  if (node != nullptr) std::printf("%-10s ", node->c_str());
  std::printf("%-30s %10llu %8llu %8llu %8llu %8s %s\n", q.name().c_str(),
              static_cast<unsigned long long>(q.version()),
              static_cast<unsigned long long>(q.ready()),
              static_cast<unsigned long long>(q.leased()),
              static_cast<unsigned long long>(q.pending_in_txn()),
              q.max_deliveries() == 0 ? "-" : absl::StrCat(q.max_deliveries()).c_str(),
              q.dead_letter_queue().empty() ? "-" : q.dead_letter_queue().c_str());
}

void PrintQueues(const v1::ListQueuesResponse& resp) {
  PrintQueueHeader(false);
  for (const auto& q : resp.queues()) PrintQueueRow(q, nullptr);
}

// queue list --participants: one table, the node first on every row; a
// node that cannot be asked is a row with its error, and the exit is 1.
// --json: atomq.v1.ConsoleQueues, as the web console's /api/queues.
int QueueListEverywhere(const Globals& g) {
  v1::ConsoleQueues all;
  int rc = 0;
  for (const auto& [id, address] : g.every_participant) {
    v1::ConsoleParticipantQueues* p = all.add_participants();
    p->set_participant(id);
    v1::ListQueuesResponse resp;
    CallContext ctx(g);
    grpc::Status s =
        v1::Queue::NewStub(Connect(address))->ListQueues(&ctx, v1::ListQueuesRequest(), &resp);
    if (s.ok()) {
      *p->mutable_queues() = std::move(*resp.mutable_queues());
    } else {
      p->set_error(DescribeError(s));
      rc = 1;
    }
  }
  if (g.json) {
    PrintJson(all);
    return rc;
  }
  PrintQueueHeader(true);
  for (const auto& p : all.participants()) {
    if (!p.error().empty()) std::printf("%-10s (%s)\n", p.participant().c_str(), p.error().c_str());
    for (const auto& q : p.queues()) PrintQueueRow(q, &p.participant());
  }
  return rc;
}

void PrintQueue(const v1::QueueInfo& q) {
  std::printf(
      "queue %s\n  version          %llu\n  ready            %llu\n  leased           %llu\n"
      "  pending in txn   %llu\n  max deliveries   %s\n  dead-letter      %s\n"
      "  created          %s ago\n",
      q.name().c_str(), static_cast<unsigned long long>(q.version()),
      static_cast<unsigned long long>(q.ready()), static_cast<unsigned long long>(q.leased()),
      static_cast<unsigned long long>(q.pending_in_txn()),
      q.max_deliveries() == 0 ? "unlimited" : absl::StrCat(q.max_deliveries()).c_str(),
      q.dead_letter_queue().empty() ? "-" : q.dead_letter_queue().c_str(),
      Age(q.created_unix_ms()).c_str());
}

int QueueList(QueueCall& c) {
  v1::ListQueuesResponse resp;
  grpc::Status s = c.stub.ListQueues(&c.ctx, v1::ListQueuesRequest(), &resp);
  return ShowReply(c.g, "ListQueues", s, resp, [&] { PrintQueues(resp); });
}

int QueueInfo(QueueCall& c) {
  v1::ListQueuesResponse resp;
  grpc::Status s = c.stub.ListQueues(&c.ctx, v1::ListQueuesRequest(), &resp);
  if (!s.ok()) return RpcError("ListQueues", s);
  for (const auto& q : resp.queues()) {
    if (q.name() != c.a.name) continue;
    if (c.g.json) {
      PrintJson(q);
    } else {
      PrintQueue(q);
    }
    return 0;
  }
  return Error(absl::StrCat("queue ", c.a.name, " does not exist on ", c.g.participant));
}

int QueueSend(QueueCall& c) {
  v1::SendRequest req;
  req.set_queue(c.a.name);
  req.set_payload(c.a.payload);
  for (const std::string& h : c.a.headers) {
    size_t eq = h.find('=');
    if (eq == std::string::npos) return Error(absl::StrCat("--header \"", h, "\": want KEY=VALUE"));
    (*req.mutable_headers())[h.substr(0, eq)] = h.substr(eq + 1);
  }
  req.set_producer_id(c.a.producer_id);
  req.set_producer_sequence(c.a.producer_sequence);
  v1::SendResponse resp;
  grpc::Status s = c.stub.Send(&c.ctx, req, &resp);
  return ShowReply(c.g, "Send", s, resp, [&] {
    if (resp.duplicate()) {
      std::printf("%s: duplicate (already sent as sequence %llu); nothing enqueued\n",
                  c.a.name.c_str(), static_cast<unsigned long long>(resp.sequence()));
    } else {
      std::printf("%s sequence %llu\n", c.a.name.c_str(),
                  static_cast<unsigned long long>(resp.sequence()));
    }
  });
}

int QueueAck(QueueCall& c) {
  v1::AckRequest req;
  SetLeased(c.a.name, c.a.sequence, c.a.token, &req);
  v1::AckResponse resp;
  grpc::Status s = c.stub.Ack(&c.ctx, req, &resp);
  return ShowReply(c.g, "Ack", s, resp, [&] {
    std::printf("%s #%llu acked\n", c.a.name.c_str(),
                static_cast<unsigned long long>(c.a.sequence));
  });
}

int QueueNack(QueueCall& c) {
  v1::NackRequest req;
  SetLeased(c.a.name, c.a.sequence, c.a.token, &req);
  req.set_dead_letter(c.a.dead_letter);
  req.set_reason(c.a.reason);
  v1::NackResponse resp;
  grpc::Status s = c.stub.Nack(&c.ctx, req, &resp);
  return ShowReply(c.g, "Nack", s, resp, [&] {
    if (resp.dead_lettered()) {
      std::printf("%s #%llu dead-lettered (sequence %llu there)\n", c.a.name.c_str(),
                  static_cast<unsigned long long>(c.a.sequence),
                  static_cast<unsigned long long>(resp.dead_letter_sequence()));
    } else {
      std::printf("%s #%llu returned to the queue\n", c.a.name.c_str(),
                  static_cast<unsigned long long>(c.a.sequence));
    }
  });
}

// Acks each delivery after it is printed (the default), or prints its
// lease token (--no-ack); --auto-ack has nothing left to do.
int HandleDeliveries(QueueCall& c, const v1::ReceiveResponse& resp) {
  const bool client_ack = !c.a.auto_ack && !c.a.no_ack && !c.a.peek;
  for (const v1::Delivery& d : resp.deliveries()) {
    if (client_ack) {
      CallContext actx(c.g);
      v1::AckRequest ack;
      SetLeased(d.queue(), d.sequence(), d.lease_token(), &ack);
      v1::AckResponse aresp;
      grpc::Status as = c.stub.Ack(&actx, ack, &aresp);
      if (!as.ok()) return RpcError("Ack", as);
    }
    if (!c.g.json) {
      std::string how = c.a.peek     ? ", peeked: still ready"
                        : c.a.no_ack ? absl::StrCat(", lease ", d.lease_token())
                                     : ", acked";
      std::printf("%s #%llu (delivery %u%s): %s\n", d.queue().c_str(),
                  static_cast<unsigned long long>(d.sequence()), d.delivery_count(), how.c_str(),
                  d.payload().c_str());
    }
  }
  return 0;
}

int QueueReceive(QueueCall& c) {
  uint32_t wait_ms = 0;
  if (!ParseWait(c.a.wait, &wait_ms)) {
    return Error(absl::StrCat("--wait \"", c.a.wait, "\": want a duration such as 500ms, 5s, 1m"));
  }
  if (c.a.auto_ack + c.a.no_ack + c.a.peek > 1) {
    return Error("--auto-ack, --no-ack and --peek exclude each other");
  }
  if (c.a.peek && wait_ms > 0) return Error("--peek answers at once: it takes no --wait");
  // The call may wait --wait for a message on top of the usual deadline.
  c.ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(uint64_t{c.g.rpc_timeout_ms} + wait_ms));
  v1::ReceiveRequest req;
  req.set_queue(c.a.name);
  req.set_max_messages(c.a.max);
  req.set_lease_ms(c.a.lease_ms);
  req.set_wait_ms(wait_ms);
  req.set_auto_ack(c.a.auto_ack);
  req.set_peek(c.a.peek);
  req.set_consumer("atomqctl");
  v1::ReceiveResponse resp;
  grpc::Status s = c.stub.Receive(&c.ctx, req, &resp);
  if (!s.ok()) return RpcError("Receive", s);
  if (int rc = HandleDeliveries(c, resp); rc != 0) return rc;
  if (c.g.json) {
    PrintJson(resp);
  } else if (resp.deliveries_size() == 0) {
    std::printf("no messages ready in %s\n", c.a.name.c_str());
  }
  return 0;
}

// queue list from a participant's data dir, without its server: leases
// are not on disk (none outlives a start), so every stored message not
// being acked by a prepared transaction counts as ready.
int QueueListInDataDir(const Globals& g) {
  absl::StatusOr<std::unique_ptr<DataFile>> f = DataFile::Open(g.data_dir);
  if (!f.ok()) return Error(std::string(f.status().message()));
  v1::ListQueuesResponse resp;
  std::map<uint64_t, v1::QueueInfo*> by_id;
  std::map<std::string, v1::QueueInfo*> by_name;
  std::map<uint64_t, uint64_t> stored;
  absl::Status st = ScanRecords<v1::QueueRecord>(**f, "queues", [&](const v1::QueueRecord& r) {
    v1::QueueInfo* q = resp.add_queues();
    q->set_name(r.name());
    q->set_version(r.next_sequence());
    q->set_created_unix_ms(r.created_unix_ms());
    q->set_max_deliveries(r.max_deliveries());
    q->set_dead_letter_queue(r.dead_letter_queue());
    by_id[r.id()] = q;
    by_name[r.name()] = q;
  });
  if (st.ok()) {
    st = (*f)->Scan(participant::kMessagesDb, [&](std::string_view key, std::string_view) {
      if (auto m = participant::schema::ParseMessageKey(key)) ++stored[m->queue_id];
      return true;
    });
  }
  std::map<std::string, uint64_t> acking;
  if (st.ok()) {
    st = ScanRecords<v1::PreparedRecord>(**f, "prepared", [&](const v1::PreparedRecord& r) {
      for (const v1::Op& op : r.ops()) {
        const std::string& queue = op.has_ack() ? op.ack().queue() : op.enqueue().queue();
        if (auto it = by_name.find(queue); it != by_name.end()) {
          it->second->set_pending_in_txn(it->second->pending_in_txn() + 1);
        }
        if (op.has_ack()) ++acking[queue];
      }
    });
  }
  if (!st.ok()) return Error(std::string(st.message()));
  for (auto& [id, q] : by_id) {
    const uint64_t n = stored[id], held = acking[q->name()];
    q->set_ready(n > held ? n - held : 0);
  }
  return ShowReply(g, "read", grpc::Status::OK, resp, [&] { PrintQueues(resp); });
}

// queue receive NAME --peek --data_dir: the messages stored for the queue,
// in sequence order, --max of them (what a restart makes ready, less those a
// prepared transaction acks), read without the server.
int QueuePeekInDataDir(const Globals& g, const QueueArgs& a) {
  if (!a.peek) return Error("without its server a queue can only be looked at: add --peek");
  absl::StatusOr<std::unique_ptr<DataFile>> f = DataFile::Open(g.data_dir);
  if (!f.ok()) return Error(std::string(f.status().message()));
  std::optional<uint64_t> id;
  absl::Status st = ScanRecords<v1::QueueRecord>(**f, "queues", [&](const v1::QueueRecord& r) {
    if (r.name() == a.name) id = r.id();
  });
  if (!st.ok()) return Error(std::string(st.message()));
  if (!id) return Error(absl::StrCat("queue ", a.name, " does not exist in ", g.data_dir));
  v1::ReceiveResponse resp;
  std::string bad;
  st = (*f)->Scan(participant::kMessagesDb, [&](std::string_view key, std::string_view value) {
    const std::optional<participant::schema::MessageId> at =
        participant::schema::ParseMessageKey(key);
    if (!at || at->queue_id != *id) return true;
    v1::MessageRecord m;
    if (absl::Status d = DecodeRecord(value, &m); !d.ok()) {
      bad = std::string(d.message());
      return false;
    }
    v1::Delivery* out = resp.add_deliveries();
    out->set_queue(a.name);
    out->set_sequence(at->sequence);
    out->set_payload(std::move(*m.mutable_payload()));
    *out->mutable_headers() = m.headers();
    return static_cast<uint32_t>(resp.deliveries_size()) < std::max(a.max, 1u);
  });
  if (!st.ok()) return Error(std::string(st.message()));
  if (!bad.empty()) return Error(absl::StrCat("a message of ", a.name, " is damaged: ", bad));
  return ShowReply(g, "read", grpc::Status::OK, resp, [&] {
    for (const v1::Delivery& d : resp.deliveries()) {
      std::printf("%s #%llu (stored): %s\n", d.queue().c_str(),
                  static_cast<unsigned long long>(d.sequence()), d.payload().c_str());
    }
  });
}

int RunQueueCommand(const Globals& g, const std::string& cmd, const QueueArgs& a,
                    QueueCommand run) {
  if (!g.data_dir.empty()) {
    if (run == QueueList) return QueueListInDataDir(g);
    if (run == QueueReceive) return QueuePeekInDataDir(g, a);
    return Error(absl::StrCat("queue ", cmd, " calls a server: drop --data_dir"));
  }
  if (run == QueueList && g.participant.empty() && !g.every_participant.empty()) {
    return QueueListEverywhere(g);
  }
  if (g.participant.empty()) return Error(absl::StrCat("queue ", cmd, " needs --participant=ADDR"));
  auto stub = v1::Queue::NewStub(Connect(g.participant));
  grpc::ClientContext ctx;
  if (run != QueueReceive) SetDeadline(&ctx, g);
  QueueCall call{g, a, *stub, ctx};
  return run(call);
}

// Registers one queue subcommand that runs `run`.
CLI::App* AddQueueCommand(CLI::App* queue, const Globals& g, int* rc,
                          const std::shared_ptr<QueueArgs>& a, const std::string& cmd,
                          const std::string& what, QueueCommand run) {
  CLI::App* sub = queue->add_subcommand(cmd, what);
  sub->callback([&g, rc, a, cmd, run] { *rc = RunQueueCommand(g, cmd, *a, run); });
  return sub;
}

void AddLeasedArgs(CLI::App* sub, QueueArgs* a) {
  sub->add_option("NAME", a->name, "queue name")->required();
  sub->add_option("SEQUENCE", a->sequence, "message sequence")->required();
  sub->add_option("LEASE_TOKEN", a->token, "lease token from receive --no-ack")->required();
}

void AddAdminCommands(CLI::App* queue, const Globals& g, int* rc,
                      const std::shared_ptr<QueueArgs>& a) {
  CLI::App* create = AddQueueCommand(queue, g, rc, a, "create", "create a queue", QueueCreate);
  create->add_option("NAME", a->name, "queue name")->required();
  create->add_option("--max_deliveries", a->max_deliveries,
                     "deliveries before a message is dead-lettered (0 = unlimited)");
  create->add_option("--dead_letter_queue", a->dead_letter_queue,
                     "an existing queue that takes dead-lettered messages");
  AddQueueCommand(queue, g, rc, a, "delete", "delete a queue and its messages", QueueDelete)
      ->add_option("NAME", a->name, "queue name")
      ->required();
  AddQueueCommand(queue, g, rc, a, "purge",
                  "remove a queue's ready messages (not leased or in a transaction)", QueuePurge)
      ->add_option("NAME", a->name, "queue name")
      ->required();
  AddQueueCommand(queue, g, rc, a, "list", "queues with version and counts", QueueList);
  AddQueueCommand(queue, g, rc, a, "info", "one queue: version, counts, options", QueueInfo)
      ->add_option("NAME", a->name, "queue name")
      ->required();
}

void AddMessageCommands(CLI::App* queue, const Globals& g, int* rc,
                        const std::shared_ptr<QueueArgs>& a) {
  CLI::App* send = AddQueueCommand(
      queue, g, rc, a, "send", "enqueue one message outside a transaction (durable)", QueueSend);
  send->add_option("NAME", a->name, "queue name")->required();
  send->add_option("PAYLOAD", a->payload, "message payload")->required();
  send->add_option("--header", a->headers, "KEY=VALUE (repeatable)");
  send->add_option("--producer_id", a->producer_id, "producer id, for deduplication of retries");
  send->add_option("--producer_sequence", a->producer_sequence,
                   "this message's number from that producer (not above the last: duplicate)");
  CLI::App* recv =
      AddQueueCommand(queue, g, rc, a, "receive",
                      "receive messages (acked after printing by default)", QueueReceive);
  recv->add_option("NAME", a->name, "queue name")->required();
  recv->add_option("--max", a->max, "messages at most")->capture_default_str();
  recv->add_option("--wait", a->wait, "wait this long for a message (e.g. 500ms, 5s)");
  recv->add_option("--lease_ms", a->lease_ms, "lease (default: the participant's)");
  recv->add_flag("--no-ack", a->no_ack, "leave them leased (prints the lease tokens)");
  recv->add_flag("--auto-ack", a->auto_ack,
                 "the participant deletes them (durably) before answering");
  recv->add_flag("--peek", a->peek,
                 "look without receiving: no lease, no delivery counted, they stay ready");
  AddLeasedArgs(AddQueueCommand(queue, g, rc, a, "ack", "ack (delete) a leased message", QueueAck),
                a.get());
  CLI::App* nack = AddQueueCommand(queue, g, rc, a, "nack",
                                   "return a leased message, or dead-letter it", QueueNack);
  AddLeasedArgs(nack, a.get());
  nack->add_flag("--dead-letter", a->dead_letter, "to the queue's dead-letter queue");
  nack->add_option("--reason", a->reason, "recorded with a dead-lettered message");
}

}  // namespace

void AddQueueCommands(CLI::App* queue, const Globals& g, int* rc) {
  // One set of arguments: only one subcommand runs.
  auto a = std::make_shared<QueueArgs>();
  AddAdminCommands(queue, g, rc, a);
  AddMessageCommands(queue, g, rc, a);
}

}  // namespace atomq::ctl
