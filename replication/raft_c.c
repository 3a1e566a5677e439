/* See raft_c.h. Ownership in C-Raft 0.22.1's raft_step mode, as read in its
 * source: the engine keeps no log; it frees a received AppendEntries batch
 * unless it hands the entries back to be persisted (then the host frees
 * them); it never frees a submitted batch; it takes every configuration it
 * is given (start, snapshot, configuration event, received snapshot). */
#include "replication/raft_c.h"

#include <raft.h>
#include <stdlib.h>
#include <string.h>

struct aq_raft {
  struct raft raft;
  bool started;
  /* What the last update points to, released by the next call. */
  aq_entry *entries;
  unsigned entries_cap;
  aq_message *messages;
  unsigned messages_cap;
  void *owned_batch;
  struct raft_buffer conf_bytes;
  /* A received snapshot's metadata, passed back once it is installed. */
  struct raft_snapshot_metadata pending;
  bool has_pending;
  /* The event being stepped is a request of a lower term than this
   * replica's: an AppendEntries, or a pre-vote RequestVote. */
  bool stale_append;
  bool stale_pre_vote;
  /* A TimeoutNow held back until its transferee holds the whole log. */
  aq_message held_timeout_now;
  bool has_held_timeout_now;
};

static void release(aq_raft *h) {
  raft_free(h->owned_batch);
  h->owned_batch = NULL;
  raft_free(h->conf_bytes.base);
  h->conf_bytes.base = NULL;
  h->conf_bytes.len = 0;
}

static bool reserve(void **array, unsigned *cap, unsigned n, size_t size) {
  if (n <= *cap) return true;
  void *p = realloc(*array, n * size);
  if (p == NULL) return false;
  *array = p;
  *cap = n;
  return true;
}

aq_raft *aq_raft_new(uint64_t id, const char *address, unsigned seed, unsigned election_timeout,
                     unsigned heartbeat_timeout) {
  aq_raft *h = calloc(1, sizeof *h);
  if (h == NULL) return NULL;
  if (raft_init(&h->raft, NULL, NULL, id, address) != 0) {
    free(h);
    return NULL;
  }
  raft_seed(&h->raft, seed);
  raft_set_election_timeout(&h->raft, election_timeout);
  raft_set_heartbeat_timeout(&h->raft, heartbeat_timeout);
  /* A member cut off from the others cannot raise the term and depose a
   * working leader when it returns (Raft thesis 9.6). */
  raft_set_pre_vote(&h->raft, true);
  return h;
}

void aq_raft_free(aq_raft *h) {
  if (h == NULL) return;
  release(h);
  if (h->has_pending) raft_configuration_close(&h->pending.configuration);
  raft_close(&h->raft, NULL);
  free(h->entries);
  free(h->messages);
  free(h);
}

static int decode_conf(const void *data, size_t len, struct raft_configuration *conf) {
  raft_configuration_init(conf);
  if (data == NULL || len == 0) return RAFT_MALFORMED;
  struct raft_buffer b = {(void *)data, len};
  return raft_configuration_decode(&b, conf);
}

/* One raft_malloc'd batch and entry array holding copies of `src`. */
static struct raft_entry *copy_entries(const aq_entry *src, unsigned n) {
  size_t size = 0;
  for (unsigned i = 0; i < n; i++) size += src[i].len;
  struct raft_entry *out = raft_malloc(n * sizeof *out);
  unsigned char *batch = raft_malloc(size > 0 ? size : 1);
  if (out == NULL || batch == NULL) {
    raft_free(out);
    raft_free(batch);
    return NULL;
  }
  unsigned char *cur = batch;
  for (unsigned i = 0; i < n; i++) {
    out[i].term = src[i].term;
    out[i].type = (enum raft_entry_type)src[i].type;
    out[i].buf.base = cur;
    out[i].buf.len = src[i].len;
    out[i].batch = batch;
    if (src[i].len > 0) memcpy(cur, src[i].data, src[i].len);
    cur += src[i].len;
  }
  return out;
}

static void out_message(const struct raft_message *m, aq_message *o) {
  memset(o, 0, sizeof *o);
  o->type = (int)m->type;
  o->peer = m->server_id;
  o->peer_address = m->server_address;
  switch (m->type) {
    case RAFT_APPEND_ENTRIES:
      o->version = m->append_entries.version;
      o->term = m->append_entries.term;
      o->prev_log_index = m->append_entries.prev_log_index;
      o->prev_log_term = m->append_entries.prev_log_term;
      o->leader_commit = m->append_entries.leader_commit;
      o->n_entries = m->append_entries.n_entries;
      break;
    case RAFT_APPEND_ENTRIES_RESULT:
      o->version = m->append_entries_result.version;
      o->term = m->append_entries_result.term;
      o->rejected = m->append_entries_result.rejected;
      o->last_log_index = m->append_entries_result.last_log_index;
      o->features = m->append_entries_result.features;
      o->capacity = m->append_entries_result.capacity;
      break;
    case RAFT_REQUEST_VOTE:
      o->version = m->request_vote.version;
      o->term = m->request_vote.term;
      o->candidate_id = m->request_vote.candidate_id;
      o->last_log_index = m->request_vote.last_log_index;
      o->last_log_term = m->request_vote.last_log_term;
      o->disrupt_leader = m->request_vote.disrupt_leader;
      o->pre_vote = m->request_vote.pre_vote;
      break;
    case RAFT_REQUEST_VOTE_RESULT:
      o->version = m->request_vote_result.version;
      o->term = m->request_vote_result.term;
      o->vote_granted = m->request_vote_result.vote_granted;
      o->pre_vote = m->request_vote_result.pre_vote;
      o->features = m->request_vote_result.features;
      o->capacity = m->request_vote_result.capacity;
      break;
    case RAFT_INSTALL_SNAPSHOT:
      /* conf and data are not set by the engine in this mode. */
      o->version = m->install_snapshot.version;
      o->term = m->install_snapshot.term;
      o->snapshot_index = m->install_snapshot.last_index;
      o->snapshot_term = m->install_snapshot.last_term;
      o->conf_index = m->install_snapshot.conf_index;
      break;
    case RAFT_TIMEOUT_NOW:
      o->version = m->timeout_now.version;
      o->term = m->timeout_now.term;
      o->last_log_index = m->timeout_now.last_log_index;
      o->last_log_term = m->timeout_now.last_log_term;
      break;
  }
}

static uint64_t match_of(aq_raft *h, uint64_t id) {
  raft_index match = 0;
  if (raft_match_index(&h->raft, id, &match) != 0) return 0;
  return match;
}

/* C-Raft 0.22.1 sends a transferee its TimeoutNow on the first success
 * result after the transfer began, not once the transferee holds the whole
 * log (replication.c compares the match index with the result's own last
 * index). A transferee still behind, or still writing, ignores it
 * (recv_timeout_now.c), and the transfer lapses: under load it nearly always
 * did. So a TimeoutNow to a member behind the leader's log is kept here and
 * sent after the update in which its match index reaches the message's last
 * index, while the same transfer lasts. */
static int hold_timeout_now(aq_raft *h, aq_update *out) {
  unsigned n = 0;
  for (unsigned i = 0; i < out->n_messages; i++) {
    const aq_message *o = &out->messages[i];
    if (o->type == AQ_MSG_TIMEOUT_NOW && match_of(h, o->peer) < o->last_log_index) {
      h->held_timeout_now = *o;
      h->has_held_timeout_now = true;
      continue;
    }
    h->messages[n++] = *o;
  }
  out->n_messages = n;
  if (!h->has_held_timeout_now) return 0;
  aq_message *held = &h->held_timeout_now;
  if (raft_transferee(&h->raft) != held->peer || h->raft.current_term != held->term) {
    h->has_held_timeout_now = false; /* the transfer lapsed, or ended */
    return 0;
  }
  if (match_of(h, held->peer) < held->last_log_index) return 0;
  const struct raft_server *to = NULL;
  for (unsigned i = 0; i < h->raft.configuration.n; i++) {
    if (h->raft.configuration.servers[i].id == held->peer) to = &h->raft.configuration.servers[i];
  }
  h->has_held_timeout_now = false;
  if (to == NULL) return 0;
  if (!reserve((void **)&h->messages, &h->messages_cap, n + 1, sizeof(aq_message))) {
    return RAFT_NOMEM;
  }
  held->peer_address = to->address;
  h->messages[n] = *held;
  out->messages = h->messages;
  out->n_messages = n + 1;
  out->flags |= RAFT_UPDATE_MESSAGES;
  return 0;
}

/* Runs one event and translates its update. `entries_in` (raft_malloc'd
 * array, batch inside) is the event's own, freed here as ownership says. */
static int step(aq_raft *h, struct raft_event *ev, uint64_t now, aq_update *out) {
  release(h);
  memset(out, 0, sizeof *out);
  ev->time = now;
  ev->capacity = 0;
  struct raft_update u;
  memset(&u, 0, sizeof u);
  int rv = raft_step(&h->raft, ev, &u);
  if (rv != 0) return rv;
  out->flags = u.flags;
  if (u.flags & RAFT_UPDATE_ENTRIES) {
    if (!reserve((void **)&h->entries, &h->entries_cap, u.entries.n, sizeof(aq_entry))) {
      return RAFT_NOMEM;
    }
    out->entries_index = u.entries.index;
    for (unsigned i = 0; i < u.entries.n; i++) {
      const struct raft_entry *e = &u.entries.batch[i];
      h->entries[i] = (aq_entry){e->term, (int)e->type, e->buf.base, e->buf.len};
    }
    out->entries = h->entries;
    out->n_entries = u.entries.n;
    if (u.entries.n > 0) h->owned_batch = u.entries.batch[0].batch;
  }
  if (u.flags & RAFT_UPDATE_SNAPSHOT) {
    h->pending = u.snapshot.metadata;
    h->has_pending = true;
    raft_free(u.snapshot.chunk.base);
    rv = raft_configuration_encode(&h->pending.configuration, &h->conf_bytes);
    if (rv != 0) return rv;
    out->snapshot_index = h->pending.index;
    out->snapshot_term = h->pending.term;
    out->conf_index = h->pending.configuration_index;
    out->conf = h->conf_bytes.base;
    out->conf_len = h->conf_bytes.len;
  }
  if (u.flags & RAFT_UPDATE_MESSAGES) {
    if (!reserve((void **)&h->messages, &h->messages_cap, u.messages.n, sizeof(aq_message))) {
      return RAFT_NOMEM;
    }
    for (unsigned i = 0; i < u.messages.n; i++) {
      out_message(&u.messages.batch[i], &h->messages[i]);
      aq_message *o = &h->messages[i];
      if (h->stale_append && o->type == AQ_MSG_APPEND_ENTRIES_RESULT) {
        /* C-Raft 0.22.1 refuses an AppendEntries of a lower term with
         * rejected = its prev_log_index and last_log_index never set
         * (recv_append_entries.c). Stack garbage would go on the wire, and
         * for prev_log_index 0 the refusal would read as a success: a
         * leader re-elected in the newer term would take the garbage as the
         * follower's match index. Sent as the refusal it is, shaped as the
         * engine shapes its others. */
        if (o->rejected == 0) o->rejected = 1;
        const uint64_t last = raft_last_index(&h->raft);
        o->last_log_index = last < o->rejected ? last : o->rejected - 1;
      }
      if (h->stale_pre_vote && o->type == AQ_MSG_REQUEST_VOTE_RESULT) {
        /* C-Raft 0.22.1 answers every pre-vote with the request's term,
         * refusals for a lower term too (recv_request_vote.c), so such a
         * candidate never learns the newer term. Two survivors of a group
         * of three then wait on each other for good: one with the newer
         * term and the shorter log, one with the longer log and the older
         * term, neither granting the other. Answered with this replica's
         * term, the candidate takes it (recv_request_vote_result.c) and the
         * one with the longer log wins the next round. */
        o->term = h->raft.current_term;
      }
    }
    out->messages = h->messages;
    out->n_messages = u.messages.n;
  }
  return hold_timeout_now(h, out);
}

int aq_raft_start(aq_raft *h, uint64_t now, uint64_t term, uint64_t voted_for,
                  uint64_t snapshot_index, uint64_t snapshot_term, const void *snapshot_conf,
                  size_t snapshot_conf_len, uint64_t snapshot_conf_index, uint64_t start_index,
                  const aq_entry *entries, unsigned n_entries, aq_update *out) {
  if (h->started) return RAFT_BUSY;
  struct raft_snapshot_metadata meta;
  memset(&meta, 0, sizeof meta);
  struct raft_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RAFT_START;
  ev.start.term = term;
  ev.start.voted_for = voted_for;
  ev.start.start_index = start_index;
  if (snapshot_index > 0) {
    int rv = decode_conf(snapshot_conf, snapshot_conf_len, &meta.configuration);
    if (rv != 0) return rv;
    meta.index = snapshot_index;
    meta.term = snapshot_term;
    meta.configuration_index = snapshot_conf_index;
    ev.start.metadata = &meta;
  }
  struct raft_entry *in = NULL;
  if (n_entries > 0) {
    in = copy_entries(entries, n_entries);
    if (in == NULL) {
      if (snapshot_index > 0) raft_configuration_close(&meta.configuration);
      return RAFT_NOMEM;
    }
  }
  ev.start.entries = in;
  ev.start.n_entries = n_entries;
  int rv = step(h, &ev, now, out);
  /* On failure the engine has freed the batch; the array is ours. */
  if (in != NULL) {
    if (rv == 0) raft_free(in[0].batch);
    raft_free(in);
  }
  if (rv == 0) h->started = true;
  return rv;
}

/* What the engine would abort on rather than refuse. */
static bool receivable(const aq_message *m) {
  if (m->peer == 0 || m->peer_address == NULL) return false;
  if (m->type < AQ_MSG_APPEND_ENTRIES || m->type > AQ_MSG_TIMEOUT_NOW) return false;
  if (m->type == AQ_MSG_APPEND_ENTRIES) {
    if ((m->prev_log_index == 0) != (m->prev_log_term == 0)) return false;
    if (m->n_entries > 0 && m->entries == NULL) return false;
    for (unsigned i = 0; i < m->n_entries; i++) {
      if (m->entries[i].term == 0) return false;
      if (m->entries[i].type < AQ_ENTRY_COMMAND || m->entries[i].type > AQ_ENTRY_CHANGE) {
        return false;
      }
    }
  }
  if (m->type == AQ_MSG_INSTALL_SNAPSHOT && (m->snapshot_index == 0 || m->snapshot_term == 0)) {
    return false;
  }
  return true;
}

/* A refusal of entries the leader knows the follower holds (its match
 * index): the answer to an older request, overtaken. C-Raft ignores such a
 * refusal in pipeline mode but in probe mode takes it at face value and
 * moves next_index to or below the match index (progress.c asserts it
 * never does); a refusal of a lower-term request reaches a leader
 * re-elected in the newer term that way. */
static bool stale_refusal(aq_raft *h, const struct raft_message *msg) {
  if (msg->type != RAFT_APPEND_ENTRIES_RESULT || h->raft.state != RAFT_LEADER) return false;
  const struct raft_append_entries_result *r = &msg->append_entries_result;
  if (r->rejected == 0 || r->term != h->raft.current_term) return false;
  raft_index match = 0;
  if (raft_match_index(&h->raft, msg->server_id, &match) != 0) return false;
  return r->rejected <= match;
}

int aq_raft_receive(aq_raft *h, uint64_t now, const aq_message *m, aq_update *out) {
  if (!receivable(m)) return RAFT_MALFORMED;
  struct raft_message msg;
  memset(&msg, 0, sizeof msg);
  msg.type = (enum raft_message_type)m->type;
  msg.server_id = m->peer;
  msg.server_address = m->peer_address;
  struct raft_entry *in = NULL;
  switch (m->type) {
    case AQ_MSG_APPEND_ENTRIES:
      msg.append_entries.version = m->version;
      msg.append_entries.term = m->term;
      msg.append_entries.prev_log_index = m->prev_log_index;
      msg.append_entries.prev_log_term = m->prev_log_term;
      msg.append_entries.leader_commit = m->leader_commit;
      if (m->n_entries > 0) {
        in = copy_entries(m->entries, m->n_entries);
        if (in == NULL) return RAFT_NOMEM;
      }
      msg.append_entries.entries = in;
      msg.append_entries.n_entries = m->n_entries;
      break;
    case AQ_MSG_APPEND_ENTRIES_RESULT:
      msg.append_entries_result.version = m->version;
      msg.append_entries_result.term = m->term;
      msg.append_entries_result.rejected = m->rejected;
      msg.append_entries_result.last_log_index = m->last_log_index;
      msg.append_entries_result.features = m->features;
      msg.append_entries_result.capacity = m->capacity;
      break;
    case AQ_MSG_REQUEST_VOTE:
      msg.request_vote.version = m->version;
      msg.request_vote.term = m->term;
      msg.request_vote.candidate_id = m->candidate_id;
      msg.request_vote.last_log_index = m->last_log_index;
      msg.request_vote.last_log_term = m->last_log_term;
      msg.request_vote.disrupt_leader = m->disrupt_leader;
      msg.request_vote.pre_vote = m->pre_vote;
      break;
    case AQ_MSG_REQUEST_VOTE_RESULT:
      msg.request_vote_result.version = m->version;
      msg.request_vote_result.term = m->term;
      msg.request_vote_result.vote_granted = m->vote_granted;
      msg.request_vote_result.pre_vote = m->pre_vote;
      msg.request_vote_result.features = m->features;
      msg.request_vote_result.capacity = m->capacity;
      break;
    case AQ_MSG_INSTALL_SNAPSHOT: {
      msg.install_snapshot.version = m->version;
      msg.install_snapshot.term = m->term;
      msg.install_snapshot.last_index = m->snapshot_index;
      msg.install_snapshot.last_term = m->snapshot_term;
      msg.install_snapshot.conf_index = m->conf_index;
      int rv = decode_conf(m->conf, m->conf_len, &msg.install_snapshot.conf);
      if (rv != 0) return rv;
      break;
    }
    case AQ_MSG_TIMEOUT_NOW:
      msg.timeout_now.version = m->version;
      msg.timeout_now.term = m->term;
      msg.timeout_now.last_log_index = m->last_log_index;
      msg.timeout_now.last_log_term = m->last_log_term;
      break;
  }
  struct raft_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RAFT_RECEIVE;
  ev.receive.message = &msg;
  if (stale_refusal(h, &msg)) {
    /* Dropped before the engine sees it: as if lost on the way. */
    raft_free(in);
    release(h);
    memset(out, 0, sizeof *out);
    return 0;
  }
  h->stale_append = msg.type == RAFT_APPEND_ENTRIES && m->term < h->raft.current_term;
  h->stale_pre_vote =
      msg.type == RAFT_REQUEST_VOTE && msg.request_vote.pre_vote && m->term < h->raft.current_term;
  int rv = step(h, &ev, now, out);
  h->stale_append = false;
  h->stale_pre_vote = false;
  raft_free(in); /* the array; the batch is the engine's or handed back */
  return rv;
}

int aq_raft_persisted_entries(aq_raft *h, uint64_t now, uint64_t index, aq_update *out) {
  struct raft_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RAFT_PERSISTED_ENTRIES;
  ev.persisted_entries.index = index;
  return step(h, &ev, now, out);
}

int aq_raft_persisted_snapshot(aq_raft *h, uint64_t now, aq_update *out) {
  if (!h->has_pending) return RAFT_INVALID;
  struct raft_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RAFT_PERSISTED_SNAPSHOT;
  ev.persisted_snapshot.metadata = h->pending; /* the engine takes its conf */
  ev.persisted_snapshot.offset = 0;
  ev.persisted_snapshot.last = true;
  h->has_pending = false;
  return step(h, &ev, now, out);
}

int aq_raft_configuration(aq_raft *h, uint64_t now, uint64_t index, const void *conf,
                          size_t conf_len, aq_update *out) {
  struct raft_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RAFT_CONFIGURATION;
  ev.configuration.index = index;
  int rv = decode_conf(conf, conf_len, &ev.configuration.conf);
  if (rv != 0) return rv;
  return step(h, &ev, now, out);
}

int aq_raft_snapshot(aq_raft *h, uint64_t now, uint64_t index, uint64_t term, const void *conf,
                     size_t conf_len, uint64_t conf_index, unsigned trailing, aq_update *out) {
  struct raft_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RAFT_SNAPSHOT;
  ev.snapshot.metadata.index = index;
  ev.snapshot.metadata.term = term;
  ev.snapshot.metadata.configuration_index = conf_index;
  ev.snapshot.trailing = trailing;
  int rv = decode_conf(conf, conf_len, &ev.snapshot.metadata.configuration);
  if (rv != 0) return rv;
  return step(h, &ev, now, out);
}

int aq_raft_timeout(aq_raft *h, uint64_t now, aq_update *out) {
  struct raft_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RAFT_TIMEOUT;
  return step(h, &ev, now, out);
}

int aq_raft_submit(aq_raft *h, uint64_t now, const aq_entry *entries, unsigned n, aq_update *out) {
  if (n == 0) return RAFT_INVALID;
  struct raft_entry *in = copy_entries(entries, n);
  if (in == NULL) return RAFT_NOMEM;
  struct raft_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RAFT_SUBMIT;
  ev.submit.entries = in;
  ev.submit.n = n;
  int rv = step(h, &ev, now, out);
  /* The engine never frees a submitted batch: on success it comes back in
   * the update (released by the next call), else it is freed here. */
  if (rv != 0) raft_free(in[0].batch);
  raft_free(in);
  return rv;
}

int aq_raft_transfer(aq_raft *h, uint64_t now, uint64_t id, aq_update *out) {
  struct raft_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RAFT_TRANSFER;
  ev.transfer.server_id = id;
  return step(h, &ev, now, out);
}

int aq_raft_catch_up(aq_raft *h, uint64_t now, uint64_t id, aq_update *out) {
  struct raft *r = &h->raft;
  /* The engine asserts all of this rather than refusing it. */
  if (raft_state(r) != RAFT_LEADER) return RAFT_NOTLEADER;
  const struct raft_server *s = NULL;
  for (unsigned i = 0; i < r->configuration.n; i++) {
    if (r->configuration.servers[i].id == id) s = &r->configuration.servers[i];
  }
  if (s == NULL) return RAFT_BADID;
  if (s->role == RAFT_VOTER) return RAFT_BADROLE;
  if (aq_raft_changing(h)) return RAFT_CANTCHANGE;
  struct raft_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RAFT_CATCH_UP;
  ev.catch_up.server_id = id;
  return step(h, &ev, now, out);
}

int aq_raft_catch_up_status(aq_raft *h, uint64_t id) {
  int status = 0;
  int rv = raft_catch_up(&h->raft, id, &status);
  if (rv != 0) return -rv;
  switch (status) {
    case RAFT_CATCH_UP_RUNNING:
      return AQ_CATCH_UP_RUNNING;
    case RAFT_CATCH_UP_ABORTED:
      return AQ_CATCH_UP_ABORTED;
    case RAFT_CATCH_UP_FINISHED:
      return AQ_CATCH_UP_FINISHED;
    default:
      return AQ_CATCH_UP_NONE;
  }
}

uint64_t aq_raft_match_index(aq_raft *h, uint64_t id) {
  raft_index index = 0;
  if (raft_match_index(&h->raft, id, &index) != 0) return 0;
  return index;
}

int aq_raft_members(aq_raft *h, void **out, size_t *out_len, uint64_t *index) {
  struct raft *r = &h->raft;
  *index = r->configuration_uncommitted_index != 0 ? r->configuration_uncommitted_index
                                                   : r->configuration_committed_index;
  *out = NULL;
  *out_len = 0;
  if (r->configuration.n == 0) return 0;
  struct raft_buffer b = {NULL, 0};
  int rv = raft_configuration_encode(&r->configuration, &b);
  if (rv != 0) return -rv;
  *out = b.base;
  *out_len = b.len;
  return 0;
}

bool aq_raft_changing(aq_raft *h) {
  struct raft *r = &h->raft;
  return r->configuration_uncommitted_index != 0 ||
         (raft_state(r) == RAFT_LEADER && r->leader_state.promotee_id != 0);
}

uint64_t aq_raft_term(const aq_raft *h) { return raft_current_term(&h->raft); }
uint64_t aq_raft_voted_for(const aq_raft *h) { return raft_voted_for(&h->raft); }
uint64_t aq_raft_commit_index(const aq_raft *h) { return raft_commit_index(&h->raft); }
uint64_t aq_raft_last_index(aq_raft *h) { return raft_last_index(&h->raft); }
uint64_t aq_raft_next_timeout(const aq_raft *h) { return raft_timeout(&h->raft); }
int aq_raft_state(aq_raft *h) { return (int)raft_state(&h->raft); }

void aq_raft_leader(aq_raft *h, uint64_t *id, const char **address) {
  raft_id lid = 0;
  raft_leader(&h->raft, &lid, address);
  *id = lid;
}

const char *aq_raft_errmsg(aq_raft *h) { return raft_errmsg(&h->raft); }
const char *aq_raft_strerror(int code) { return raft_strerror(code); }

int aq_raft_error_kind(int code) {
  switch (code) {
    case RAFT_NOTLEADER:
    case RAFT_CANTCHANGE:
    case RAFT_BUSY:
    case RAFT_LEADERSHIPLOST:
      return AQ_ERR_NOT_NOW;
    case RAFT_MALFORMED:
    case RAFT_INVALID:
    case RAFT_BADID:
    case RAFT_BADROLE:
    case RAFT_DUPLICATEID:
    case RAFT_DUPLICATEADDRESS:
      return AQ_ERR_MALFORMED;
    default:
      return AQ_ERR_OTHER;
  }
}

int aq_conf_encode(const uint64_t *ids, const char *const *addresses, const int *roles, unsigned n,
                   void **out, size_t *out_len) {
  struct raft_configuration conf;
  raft_configuration_init(&conf);
  int rv = 0;
  for (unsigned i = 0; i < n && rv == 0; i++) {
    rv = raft_configuration_add(&conf, ids[i], addresses[i], roles[i]);
  }
  struct raft_buffer b = {NULL, 0};
  if (rv == 0) rv = raft_configuration_encode(&conf, &b);
  raft_configuration_close(&conf);
  if (rv != 0) return rv;
  *out = b.base;
  *out_len = b.len;
  return 0;
}

int aq_conf_decode(const void *data, size_t len, uint64_t *ids, int *roles, char *names,
                   size_t names_len, unsigned max) {
  struct raft_configuration conf;
  int rv = decode_conf(data, len, &conf);
  if (rv != 0) return -rv;
  size_t used = 0;
  unsigned n = conf.n;
  for (unsigned i = 0; i < conf.n && rv == 0; i++) {
    size_t need = strlen(conf.servers[i].address) + 1;
    if (i >= max || used + need > names_len) {
      rv = RAFT_TOOBIG;
      break;
    }
    ids[i] = conf.servers[i].id;
    roles[i] = conf.servers[i].role;
    memcpy(names + used, conf.servers[i].address, need);
    used += need;
  }
  raft_configuration_close(&conf);
  return rv != 0 ? -rv : (int)n;
}

void aq_free(void *p) { raft_free(p); }
