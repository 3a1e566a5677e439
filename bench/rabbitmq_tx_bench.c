// rabbitmq_tx_bench: RabbitMQ's atomic multi-queue publish, closed loop.
//
// Each client thread has its own connection and channel in tx mode and loops:
// publish one persistent message to each of K durable queues, tx.commit, wait
// for commit-ok. That is the AMQP 0-9-1 counterpart of one atomq Execute with
// one enqueue on each of K participants. Built by compare_rabbitmq.sh.
//
// In confirm mode the K queues are quorum queues (Raft groups of 3) and each
// channel is in publisher-confirm mode instead (quorum queues do not support
// tx): a "transaction" is K persistent publishes, one per queue, done when the
// broker has acked all K, i.e. each is in a majority of its queue's replicas.
// That is durability of all K, not atomicity: RabbitMQ has no atomic
// multi-queue publish for quorum queues. A basic.nack counts as an error.
//
// Usage: rabbitmq_tx_bench HOST PORT[,PORT...] CLIENTS K PAYLOAD_BYTES DURATION_S WARMUP_S
//          [tx|confirm]
// Client i connects to the (i mod n)th PORT, and queue i is declared through
// the (i mod n)th, so with one port per cluster node the clients and (as
// quorum queue leaders go to the declaring node by default) the queue leaders
// are spread over the nodes. Prints one line of key=value figures on stdout;
// progress on stderr.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

enum { kWarmup = 0, kMeasure = 1, kStop = 2 };
enum { kTxnOk = 0, kTxnNacked = 1, kTxnFailed = 2 };
enum { kMaxPorts = 16 };
// A confirm still missing after this long means the cluster is stuck; failing
// keeps the run bounded (tx mode blocks in tx.commit as it always has).
static const double kConfirmTimeoutS = 30;

static const char* g_host;
static int g_ports[kMaxPorts];
static int g_nports;
static int g_confirm;  // confirm mode (quorum queues) rather than tx
static int g_k;
static int g_payload;
static atomic_int g_phase = kWarmup;
static atomic_ullong g_completed;  // any phase, for progress

struct Worker {
  pthread_t thread;
  int id;
  uint32_t* samples_us;  // measured window only
  size_t n, cap;
  uint64_t errors;
  char error[256];
};

static double Now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

// Nonzero (and a message in err) when the broker's method m closes the
// channel or the connection.
static int Closed(const amqp_method_t* m, const char* what, char* err, size_t len) {
  if (m->id == AMQP_CHANNEL_CLOSE_METHOD) {
    amqp_channel_close_t* c = (amqp_channel_close_t*)m->decoded;
    snprintf(err, len, "%s: channel closed: %u %.*s", what, c->reply_code,
             (int)c->reply_text.len, (const char*)c->reply_text.bytes);
    return 1;
  }
  if (m->id == AMQP_CONNECTION_CLOSE_METHOD) {
    amqp_connection_close_t* c = (amqp_connection_close_t*)m->decoded;
    snprintf(err, len, "%s: connection closed: %u %.*s", what, c->reply_code,
             (int)c->reply_text.len, (const char*)c->reply_text.bytes);
    return 1;
  }
  return 0;
}

// Nonzero (and a message in err) when an AMQP call failed.
static int RpcFailed(amqp_connection_state_t conn, const char* what, char* err, size_t len) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
  switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      return 0;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      snprintf(err, len, "%s: %s", what, amqp_error_string2(r.library_error));
      return 1;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (!Closed(&r.reply, what, err, len))
        snprintf(err, len, "%s: server exception, method 0x%08x", what, r.reply.id);
      return 1;
    default:
      snprintf(err, len, "%s: no reply", what);
      return 1;
  }
}

static amqp_connection_state_t Connect(int port, char* err, size_t len) {
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t* sock = amqp_tcp_socket_new(conn);
  if (sock == NULL) {
    snprintf(err, len, "amqp_tcp_socket_new failed");
    amqp_destroy_connection(conn);
    return NULL;
  }
  int rc = amqp_socket_open(sock, g_host, port);
  if (rc != AMQP_STATUS_OK) {
    snprintf(err, len, "connect %s:%d: %s", g_host, port, amqp_error_string2(rc));
    amqp_destroy_connection(conn);
    return NULL;
  }
  amqp_rpc_reply_t r = amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest",
                                  "guest");
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    snprintf(err, len, "login failed");
    amqp_destroy_connection(conn);
    return NULL;
  }
  amqp_channel_open(conn, 1);
  if (RpcFailed(conn, "channel.open", err, len)) {
    amqp_destroy_connection(conn);
    return NULL;
  }
  return conn;
}

// Quorum queues get names of their own: a broker that already has the
// classic bench_qN from a tx run would refuse to redeclare them as quorum.
static void QueueName(int i, char* out, size_t len) {
  snprintf(out, len, g_confirm ? "bench_qq%d" : "bench_q%d", i + 1);
}

// One message to each of the K queues; nonzero (and a message in err) when a
// publish failed.
static int PublishAll(amqp_connection_state_t conn, char names[][32], int k,
                      const amqp_basic_properties_t* props, amqp_bytes_t body, char* err,
                      size_t len) {
  for (int i = 0; i < k; ++i) {
    int rc = amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(names[i]), 0, 0,
                                props, body);
    if (rc != AMQP_STATUS_OK) {
      snprintf(err, len, "basic.publish: %s", amqp_error_string2(rc));
      return 1;
    }
  }
  return 0;
}

// One transaction in tx mode: commit-ok means all K publishes are durable.
static int TxTxn(amqp_connection_state_t conn, char names[][32], int k,
                 const amqp_basic_properties_t* props, amqp_bytes_t body, char* err,
                 size_t len) {
  if (PublishAll(conn, names, k, props, body, err, len)) return kTxnFailed;
  amqp_tx_commit(conn, 1);
  return RpcFailed(conn, "tx.commit", err, len) ? kTxnFailed : kTxnOk;
}

// The bits (tag - first) of a transaction's K tags that a basic.ack or
// basic.nack of `tag` settles; `multiple` settles every tag up to it.
static uint64_t Settled(uint64_t first, int k, uint64_t tag, int multiple) {
  if (tag < first) return 0;
  uint64_t i = tag - first;
  if (!multiple) return i < (uint64_t)k ? 1ull << i : 0;
  return i >= 63 ? ~0ull : (2ull << i) - 1;
}

// One transaction in confirm mode: K publishes, then frames until the broker
// has acked or nacked each of their delivery tags. *tag is the channel's last
// delivery tag (confirm.select numbers a channel's publishes from 1).
static int ConfirmTxn(amqp_connection_state_t conn, char names[][32], int k,
                      const amqp_basic_properties_t* props, amqp_bytes_t body, uint64_t* tag,
                      char* err, size_t len) {
  uint64_t first = *tag + 1;
  if (PublishAll(conn, names, k, props, body, err, len)) return kTxnFailed;
  *tag += (uint64_t)k;
  uint64_t pending = k == 64 ? ~0ull : (1ull << k) - 1;  // bit i: tag first + i
  int nacked = 0;
  double deadline = Now() + kConfirmTimeoutS;
  while (pending) {
    double left = deadline - Now();
    if (left <= 0) {
      snprintf(err, len, "no confirm within %.0f s", kConfirmTimeoutS);
      return kTxnFailed;
    }
    struct timeval tv = {(time_t)left, (suseconds_t)((left - (double)(time_t)left) * 1e6)};
    amqp_frame_t f;
    int rc = amqp_simple_wait_frame_noblock(conn, &f, &tv);
    if (rc == AMQP_STATUS_TIMEOUT) continue;
    if (rc != AMQP_STATUS_OK) {
      snprintf(err, len, "waiting for confirms: %s", amqp_error_string2(rc));
      return kTxnFailed;
    }
    if (f.frame_type != AMQP_FRAME_METHOD) continue;
    const amqp_method_t* m = &f.payload.method;
    if (m->id == AMQP_BASIC_ACK_METHOD) {
      const amqp_basic_ack_t* a = m->decoded;
      pending &= ~Settled(first, k, a->delivery_tag, a->multiple);
    } else if (m->id == AMQP_BASIC_NACK_METHOD) {
      const amqp_basic_nack_t* n = m->decoded;
      uint64_t settled = pending & Settled(first, k, n->delivery_tag, n->multiple);
      if (settled && !nacked)
        snprintf(err, len, "basic.nack of delivery tag %llu%s",
                 (unsigned long long)n->delivery_tag, n->multiple ? " (multiple)" : "");
      nacked |= settled != 0;
      pending &= ~settled;
    } else if (Closed(m, "waiting for confirms", err, len)) {
      return kTxnFailed;
    }
  }
  return nacked ? kTxnNacked : kTxnOk;
}

static void* RunWorker(void* arg) {
  struct Worker* w = arg;
  amqp_connection_state_t conn = Connect(g_ports[w->id % g_nports], w->error, sizeof(w->error));
  if (conn == NULL) {
    w->errors++;
    return NULL;
  }
  if (g_confirm) {
    amqp_confirm_select(conn, 1);
  } else {
    amqp_tx_select(conn, 1);
  }
  if (RpcFailed(conn, g_confirm ? "confirm.select" : "tx.select", w->error, sizeof(w->error))) {
    w->errors++;
    goto done;
  }
  uint64_t tag = 0;
  char* payload = malloc((size_t)g_payload + 1);
  for (int i = 0; i < g_payload; ++i) payload[i] = (char)('a' + (i * 7 + w->id) % 26);
  amqp_bytes_t body = {(size_t)g_payload, payload};
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof(props));
  props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.delivery_mode = 2;  // persistent
  char names[64][32];
  int k = g_k < 64 ? g_k : 64;
  for (int i = 0; i < k; ++i) QueueName(i, names[i], sizeof(names[i]));

  while (atomic_load(&g_phase) != kStop) {
    double start = Now();
    char why[sizeof(w->error)];
    int rc = g_confirm ? ConfirmTxn(conn, names, k, &props, body, &tag, why, sizeof(why))
                       : TxTxn(conn, names, k, &props, body, why, sizeof(why));
    if (g_confirm) amqp_maybe_release_buffers(conn);  // the ack frames' memory
    if (rc != kTxnOk) {
      // Report the first nack, or what stopped this client.
      if (w->errors++ == 0 || rc == kTxnFailed) snprintf(w->error, sizeof(w->error), "%s", why);
      if (rc == kTxnNacked) continue;  // the channel is still usable
      break;  // the channel is gone after an error; this client stops
    }
    double end = Now();
    atomic_fetch_add(&g_completed, 1);
    if (atomic_load(&g_phase) == kMeasure) {
      if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 4096;
        w->samples_us = realloc(w->samples_us, w->cap * sizeof(uint32_t));
      }
      double us = (end - start) * 1e6;
      w->samples_us[w->n++] = us > 4e9 ? 4000000000u : (uint32_t)us;
    }
  }
  free(payload);
done:
  amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
  return NULL;
}

static int CmpU32(const void* a, const void* b) {
  uint32_t x = *(const uint32_t*)a, y = *(const uint32_t*)b;
  return x < y ? -1 : x > y;
}

static double Quantile(const uint32_t* v, size_t n, double q) {
  if (n == 0) return 0;
  size_t rank = (size_t)(q * (double)n + 0.999999);
  if (rank < 1) rank = 1;
  if (rank > n) rank = n;
  return v[rank - 1] / 1000.0;
}

// Fills g_ports from "P1,P2,..."; nonzero when the list is bad.
static int ParsePorts(const char* list) {
  g_nports = 0;
  for (const char* p = list;; ++p) {
    char* end;
    long port = strtol(p, &end, 10);
    if (end == p || port < 1 || port > 65535 || g_nports == kMaxPorts) return 1;
    g_ports[g_nports++] = (int)port;
    if (*end == '\0') return 0;
    if (*end != ',') return 1;
    p = end;
  }
}

// Declares the K durable queues (in confirm mode: quorum queues with 3
// replicas), queue i through the (i mod n)th port, before the clients start.
static int DeclareQueues(void) {
  amqp_table_entry_t quorum[2];
  quorum[0].key = amqp_cstring_bytes("x-queue-type");
  quorum[0].value.kind = AMQP_FIELD_KIND_UTF8;
  quorum[0].value.value.bytes = amqp_cstring_bytes("quorum");
  quorum[1].key = amqp_cstring_bytes("x-quorum-initial-group-size");
  quorum[1].value.kind = AMQP_FIELD_KIND_I32;
  quorum[1].value.value.i32 = 3;
  amqp_table_t args = g_confirm ? (amqp_table_t){2, quorum} : amqp_empty_table;
  char err[256];
  for (int i = 0; i < g_k; ++i) {
    amqp_connection_state_t admin = Connect(g_ports[i % g_nports], err, sizeof(err));
    if (admin == NULL) {
      fprintf(stderr, "rabbitmq_tx_bench: %s\n", err);
      return 1;
    }
    char name[32];
    QueueName(i, name, sizeof(name));
    amqp_queue_declare(admin, 1, amqp_cstring_bytes(name), 0, 1, 0, 0, args);
    int failed = RpcFailed(admin, "queue.declare", err, sizeof(err));
    if (failed) fprintf(stderr, "rabbitmq_tx_bench: %s\n", err);
    amqp_channel_close(admin, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(admin, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(admin);
    if (failed) return 1;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 8 && argc != 9) {
    fprintf(stderr,
            "usage: %s HOST PORT[,PORT...] CLIENTS K PAYLOAD_BYTES DURATION_S WARMUP_S "
            "[tx|confirm]\n",
            argv[0]);
    return 2;
  }
  g_host = argv[1];
  if (ParsePorts(argv[2])) {
    fprintf(stderr, "rabbitmq_tx_bench: bad port list %s (at most %d ports)\n", argv[2],
            kMaxPorts);
    return 2;
  }
  if (argc == 9 && strcmp(argv[8], "confirm") == 0) {
    g_confirm = 1;
  } else if (argc == 9 && strcmp(argv[8], "tx") != 0) {
    fprintf(stderr, "rabbitmq_tx_bench: mode is tx or confirm, not %s\n", argv[8]);
    return 2;
  }
  int clients = atoi(argv[3]);
  g_k = atoi(argv[4]);
  g_payload = atoi(argv[5]);
  double duration = atof(argv[6]);
  double warmup = atof(argv[7]);
  if (clients < 1 || g_k < 1 || g_k > 64 || g_payload < 0 || duration <= 0 || warmup < 0) {
    fprintf(stderr, "rabbitmq_tx_bench: bad arguments (1 <= K <= 64)\n");
    return 2;
  }

  if (DeclareQueues()) return 1;

  struct Worker* workers = calloc((size_t)clients, sizeof(struct Worker));
  for (int i = 0; i < clients; ++i) {
    workers[i].id = i;
    if (pthread_create(&workers[i].thread, NULL, RunWorker, &workers[i]) != 0) {
      fprintf(stderr, "rabbitmq_tx_bench: pthread_create: %s\n", strerror(errno));
      return 1;
    }
  }

  double t_start = Now();
  double t0 = t_start + warmup, t1 = t0 + duration;
  double next_tick = t_start + 1;
  unsigned long long last = 0;
  for (;;) {
    double now = Now();
    if (now >= next_tick) {
      unsigned long long c = atomic_load(&g_completed);
      fprintf(stderr, "[%6.1fs] %-7s %8llu txn/s\n", now - t_start,
              atomic_load(&g_phase) == kMeasure ? "measure" : "warmup", c - last);
      last = c;
      next_tick += 1;
    }
    if (atomic_load(&g_phase) == kWarmup && now >= t0) {
      t0 = now;
      t1 = t0 + duration;
      atomic_store(&g_phase, kMeasure);
    }
    if (atomic_load(&g_phase) == kMeasure && now >= t1) break;
    usleep(10000);
  }
  atomic_store(&g_phase, kStop);
  double window = Now() - t0;
  for (int i = 0; i < clients; ++i) pthread_join(workers[i].thread, NULL);

  size_t total = 0;
  uint64_t errors = 0;
  for (int i = 0; i < clients; ++i) {
    total += workers[i].n;
    errors += workers[i].errors;
  }
  uint32_t* all = malloc((total ? total : 1) * sizeof(uint32_t));
  size_t pos = 0;
  for (int i = 0; i < clients; ++i) {
    if (workers[i].n) memcpy(all + pos, workers[i].samples_us, workers[i].n * sizeof(uint32_t));
    pos += workers[i].n;
    if (workers[i].errors) fprintf(stderr, "client %d: %s\n", i, workers[i].error);
  }
  qsort(all, total, sizeof(uint32_t), CmpU32);
  printf("committed=%zu errors=%llu window_s=%.3f txn_per_s=%.1f p50_ms=%.3f p99_ms=%.3f "
         "p999_ms=%.3f max_ms=%.3f\n",
         total, (unsigned long long)errors, window, (double)total / window,
         Quantile(all, total, 0.5), Quantile(all, total, 0.99), Quantile(all, total, 0.999),
         total ? all[total - 1] / 1000.0 : 0.0);
  return total == 0 ? 1 : 0;
}
