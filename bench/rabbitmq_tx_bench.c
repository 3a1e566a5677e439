// rabbitmq_tx_bench: RabbitMQ's atomic multi-queue publish, closed loop.
//
// Each client thread has its own connection and channel in tx mode and loops:
// publish one persistent message to each of K durable queues, tx.commit, wait
// for commit-ok. That is the AMQP 0-9-1 counterpart of one atomq Execute with
// one enqueue on each of K participants. Built by compare_rabbitmq.sh.
//
// Usage: rabbitmq_tx_bench HOST PORT CLIENTS K PAYLOAD_BYTES DURATION_S WARMUP_S
// Prints one line of key=value figures on stdout; progress on stderr.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

enum { kWarmup = 0, kMeasure = 1, kStop = 2 };

static const char* g_host;
static int g_port;
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
      if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t* m = (amqp_channel_close_t*)r.reply.decoded;
        snprintf(err, len, "%s: channel closed: %u %.*s", what, m->reply_code,
                 (int)m->reply_text.len, (const char*)m->reply_text.bytes);
      } else if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t* m = (amqp_connection_close_t*)r.reply.decoded;
        snprintf(err, len, "%s: connection closed: %u %.*s", what, m->reply_code,
                 (int)m->reply_text.len, (const char*)m->reply_text.bytes);
      } else {
        snprintf(err, len, "%s: server exception, method 0x%08x", what, r.reply.id);
      }
      return 1;
    default:
      snprintf(err, len, "%s: no reply", what);
      return 1;
  }
}

static amqp_connection_state_t Connect(char* err, size_t len) {
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t* sock = amqp_tcp_socket_new(conn);
  if (sock == NULL) {
    snprintf(err, len, "amqp_tcp_socket_new failed");
    amqp_destroy_connection(conn);
    return NULL;
  }
  int rc = amqp_socket_open(sock, g_host, g_port);
  if (rc != AMQP_STATUS_OK) {
    snprintf(err, len, "connect %s:%d: %s", g_host, g_port, amqp_error_string2(rc));
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

static void QueueName(int i, char* out, size_t len) { snprintf(out, len, "bench_q%d", i + 1); }

static void* RunWorker(void* arg) {
  struct Worker* w = arg;
  amqp_connection_state_t conn = Connect(w->error, sizeof(w->error));
  if (conn == NULL) {
    w->errors++;
    return NULL;
  }
  amqp_tx_select(conn, 1);
  if (RpcFailed(conn, "tx.select", w->error, sizeof(w->error))) {
    w->errors++;
    goto done;
  }
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
    int failed = 0;
    for (int i = 0; i < k && !failed; ++i) {
      int rc = amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(names[i]), 0, 0,
                                  &props, body);
      if (rc != AMQP_STATUS_OK) {
        snprintf(w->error, sizeof(w->error), "basic.publish: %s", amqp_error_string2(rc));
        failed = 1;
      }
    }
    if (!failed) {
      amqp_tx_commit(conn, 1);
      failed = RpcFailed(conn, "tx.commit", w->error, sizeof(w->error));
    }
    if (failed) {
      // The channel is gone after an error; this client stops.
      w->errors++;
      break;
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

int main(int argc, char** argv) {
  if (argc != 8) {
    fprintf(stderr,
            "usage: %s HOST PORT CLIENTS K PAYLOAD_BYTES DURATION_S WARMUP_S\n", argv[0]);
    return 2;
  }
  g_host = argv[1];
  g_port = atoi(argv[2]);
  int clients = atoi(argv[3]);
  g_k = atoi(argv[4]);
  g_payload = atoi(argv[5]);
  double duration = atof(argv[6]);
  double warmup = atof(argv[7]);
  if (clients < 1 || g_k < 1 || g_k > 64 || g_payload < 0 || duration <= 0 || warmup < 0) {
    fprintf(stderr, "rabbitmq_tx_bench: bad arguments (1 <= K <= 64)\n");
    return 2;
  }

  // Declare the K durable queues once, before the clients start.
  char err[256];
  amqp_connection_state_t admin = Connect(err, sizeof(err));
  if (admin == NULL) {
    fprintf(stderr, "rabbitmq_tx_bench: %s\n", err);
    return 1;
  }
  for (int i = 0; i < g_k; ++i) {
    char name[32];
    QueueName(i, name, sizeof(name));
    amqp_queue_declare(admin, 1, amqp_cstring_bytes(name), 0, 1, 0, 0, amqp_empty_table);
    if (RpcFailed(admin, "queue.declare", err, sizeof(err))) {
      fprintf(stderr, "rabbitmq_tx_bench: %s\n", err);
      return 1;
    }
  }
  amqp_channel_close(admin, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(admin, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(admin);

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
