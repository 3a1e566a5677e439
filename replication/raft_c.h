/* The consensus engine (C-Raft 0.22.1's I/O-free raft_step) behind a plain C
 * interface that C++ can include: raft.h itself does not compile as C++.
 * Every call is one event in; what the engine asks for comes back in an
 * aq_update whose pointers stay valid until the next call on the same
 * aq_raft. Memory the engine takes or hands back is managed here. */
#ifndef ATOMQ_REPLICATION_RAFT_C_H_
#define ATOMQ_REPLICATION_RAFT_C_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aq_raft aq_raft;

enum { AQ_ENTRY_COMMAND = 1, AQ_ENTRY_BARRIER = 2, AQ_ENTRY_CHANGE = 3 };
enum {
  AQ_MSG_APPEND_ENTRIES = 1,
  AQ_MSG_APPEND_ENTRIES_RESULT = 2,
  AQ_MSG_REQUEST_VOTE = 3,
  AQ_MSG_REQUEST_VOTE_RESULT = 4,
  AQ_MSG_INSTALL_SNAPSHOT = 5,
  AQ_MSG_TIMEOUT_NOW = 6
};
enum { AQ_UNAVAILABLE = 0, AQ_FOLLOWER = 1, AQ_CANDIDATE = 2, AQ_LEADER = 3 };
/* Member roles, as C-Raft numbers them. */
enum { AQ_STANDBY = 0, AQ_VOTER = 1, AQ_SPARE = 2 };

typedef struct {
  uint64_t term;
  int type; /* AQ_ENTRY_* */
  const void *data;
  size_t len;
} aq_entry;

/* One message of the engine's protocol, flattened: which fields count
 * depends on `type`. Outgoing AppendEntries carry only n_entries (the host
 * sends its log's entries after prev_log_index); outgoing InstallSnapshot
 * carry no configuration or data (the host sends its own). */
typedef struct {
  int type;      /* AQ_MSG_* */
  uint64_t peer; /* outgoing: the receiver; incoming: the sender */
  const char *peer_address;
  unsigned char version;
  uint64_t term;
  /* RequestVote; TimeoutNow and AppendEntriesResult use last_log_index. */
  uint64_t candidate_id, last_log_index, last_log_term;
  bool disrupt_leader, pre_vote, vote_granted;
  /* AppendEntries */
  uint64_t prev_log_index, prev_log_term, leader_commit;
  const aq_entry *entries;
  unsigned n_entries;
  /* AppendEntriesResult */
  uint64_t rejected;
  unsigned short features, capacity;
  /* InstallSnapshot */
  uint64_t snapshot_index, snapshot_term, conf_index;
  const void *conf; /* aq_conf_encode's form */
  size_t conf_len;
} aq_message;

enum {
  AQ_UPDATE_TERM = 1 << 0,
  AQ_UPDATE_VOTE = 1 << 1,
  AQ_UPDATE_ENTRIES = 1 << 2,
  AQ_UPDATE_SNAPSHOT = 1 << 3,
  AQ_UPDATE_MESSAGES = 1 << 4,
  AQ_UPDATE_STATE = 1 << 5,
  AQ_UPDATE_COMMIT_INDEX = 1 << 6,
  AQ_UPDATE_TIMEOUT = 1 << 7
};

typedef struct {
  unsigned flags; /* AQ_UPDATE_* */
  /* AQ_UPDATE_ENTRIES: persist these from `entries_index` on, dropping any
   * entry at or after it first. */
  uint64_t entries_index;
  const aq_entry *entries;
  unsigned n_entries;
  /* AQ_UPDATE_SNAPSHOT: a snapshot up to `snapshot_index` was received;
   * install it, then aq_raft_persisted_snapshot. */
  uint64_t snapshot_index, snapshot_term, conf_index;
  const void *conf;
  size_t conf_len;
  const aq_message *messages;
  unsigned n_messages;
} aq_update;

/* A new engine for member `id` (> 0) at `address`; timeouts in the engine's
 * time unit (the host's clock). NULL if out of memory. */
aq_raft *aq_raft_new(uint64_t id, const char *address, unsigned seed, unsigned election_timeout,
                     unsigned heartbeat_timeout);
void aq_raft_free(aq_raft *r);

/* Events. Each returns 0 or a C-Raft error code (aq_raft_errmsg says more). */
int aq_raft_start(aq_raft *r, uint64_t now, uint64_t term, uint64_t voted_for,
                  uint64_t snapshot_index, uint64_t snapshot_term, const void *snapshot_conf,
                  size_t snapshot_conf_len, uint64_t snapshot_conf_index, uint64_t start_index,
                  const aq_entry *entries, unsigned n_entries, aq_update *out);
int aq_raft_receive(aq_raft *r, uint64_t now, const aq_message *m, aq_update *out);
int aq_raft_persisted_entries(aq_raft *r, uint64_t now, uint64_t index, aq_update *out);
/* After an AQ_UPDATE_SNAPSHOT is installed. */
int aq_raft_persisted_snapshot(aq_raft *r, uint64_t now, aq_update *out);
/* A configuration entry at `index` was committed. */
int aq_raft_configuration(aq_raft *r, uint64_t now, uint64_t index, const void *conf,
                          size_t conf_len, aq_update *out);
/* The state up to `index` is durable elsewhere: keep `trailing` entries. */
int aq_raft_snapshot(aq_raft *r, uint64_t now, uint64_t index, uint64_t term, const void *conf,
                     size_t conf_len, uint64_t conf_index, unsigned trailing, aq_update *out);
int aq_raft_timeout(aq_raft *r, uint64_t now, aq_update *out);
int aq_raft_submit(aq_raft *r, uint64_t now, const aq_entry *entries, unsigned n, aq_update *out);
int aq_raft_transfer(aq_raft *r, uint64_t now, uint64_t id, aq_update *out);
/* The leader starts bringing standby or spare member `id` up to date, in
 * rounds, before it may vote (aq_raft_catch_up_status says how it went).
 * RAFT_NOTLEADER, RAFT_BADID (not a member), RAFT_BADROLE (a voter) or
 * RAFT_CANTCHANGE (a change or another catch-up under way). */
int aq_raft_catch_up(aq_raft *r, uint64_t now, uint64_t id, aq_update *out);
enum {
  AQ_CATCH_UP_NONE = 0,
  AQ_CATCH_UP_RUNNING = 1,
  AQ_CATCH_UP_ABORTED = 2,
  AQ_CATCH_UP_FINISHED = 3
};
/* Where member `id`'s catch-up stands, on the leader; negative (a C-Raft
 * error) when not the leader or not a member. */
int aq_raft_catch_up_status(aq_raft *r, uint64_t id);
/* The leader's match index for member `id` (0 when not the leader or not a
 * member). */
uint64_t aq_raft_match_index(aq_raft *r, uint64_t id);
/* The current configuration (the last change, committed or not), encoded as
 * aq_conf_encode does (freed with aq_free), and the index of its entry (0:
 * none yet, a member waiting to be sent the log). A negative C-Raft error
 * when out of memory. */
int aq_raft_members(aq_raft *r, void **out, size_t *out_len, uint64_t *index);
/* Whether a configuration change or a catch-up is under way. */
bool aq_raft_changing(aq_raft *r);

uint64_t aq_raft_term(const aq_raft *r);
uint64_t aq_raft_voted_for(const aq_raft *r);
uint64_t aq_raft_commit_index(const aq_raft *r);
uint64_t aq_raft_last_index(aq_raft *r);
uint64_t aq_raft_next_timeout(const aq_raft *r);
int aq_raft_state(aq_raft *r);
/* The known leader (0 and NULL when none). */
void aq_raft_leader(aq_raft *r, uint64_t *id, const char **address);
const char *aq_raft_errmsg(aq_raft *r);
/* What an error code means to a host: the event came at the wrong time
 * (not the leader, a change under way, busy), the input was malformed or
 * invalid, or something else. */
enum { AQ_ERR_OTHER = 0, AQ_ERR_NOT_NOW = 1, AQ_ERR_MALFORMED = 2 };
int aq_raft_error_kind(int code);
const char *aq_raft_strerror(int code);

/* Configurations: members (id, address, role) to the bytes a
 * configuration entry holds, and back. Encoded bytes are freed with
 * aq_free; decoded addresses point into `names` (at most `max` members;
 * the return is the member count or a negative C-Raft error). */
int aq_conf_encode(const uint64_t *ids, const char *const *addresses, const int *roles, unsigned n,
                   void **out, size_t *out_len);
int aq_conf_decode(const void *data, size_t len, uint64_t *ids, int *roles, char *names,
                   size_t names_len, unsigned max);
void aq_free(void *p);

#ifdef __cplusplus
}
#endif

#endif /* ATOMQ_REPLICATION_RAFT_C_H_ */
