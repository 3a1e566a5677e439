// atomq-sim: runs the deterministic simulator over many seeds.
//
//   atomq-sim --seeds=N [--seed=S] [--protocol=2pc|3pc|mixed] [--plant=NAME]
//             [--expect_violation] [--max_failures=K] [--verbose]
//
// Seeds S, S+1, ..., S+N-1 (S defaults to 1). One line per failing seed, with
// the command that replays it, then a summary ending in a digest of every
// seed's event trace (equal before and after a behaviour-preserving change). Exit status: 0 when no
// seed failed; 1 when some did; 2 on a usage error. With --expect_violation (for a planted bug) the
// meaning flips: 0 when some seed caught it, 1 when none did.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "CLI/CLI.hpp"
#include "tests/sim/sim.h"

namespace {

// Replay line for a core's ATOMQ_CHECK abort in the middle of a seed.
char g_replay[512];
// --expect_violation: a planted bug that makes a core stop on one of its
// own checks was caught too (by the core rather than the checker).
bool g_expect_violation = false;

void OnAbort(int) {
  const char* head = g_expect_violation ? "caught (a core check aborted the run) replay: "
                                        : "FAIL (a core check aborted the run) replay: ";
  ssize_t ignored = write(2, head, std::strlen(head));
  ignored = write(2, g_replay, std::strlen(g_replay));
  ignored = write(2, "\n", 1);
  if (g_expect_violation) {
    const char* tail = "the planted bug was caught\n";
    ignored = write(1, tail, std::strlen(tail));
  }
  (void)ignored;
  _exit(g_expect_violation ? 0 : 3);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"atomq-sim: the deterministic simulator of atomq's commit protocols"};
  uint64_t seeds = 1, first = 1;
  std::string protocol = "mixed", plant;
  bool expect_violation = false, verbose = false;
  uint64_t max_failures = 20;
  bool seed_given = false;
  app.add_option("--seeds", seeds, "how many seeds to run")->capture_default_str();
  app.add_option_function<uint64_t>(
      "--seed",
      [&](uint64_t s) {
        first = s;
        seed_given = true;
      },
      "first seed (default 1)");
  app.add_option("--protocol", protocol, "2pc, 3pc, or mixed (each transaction picks)")
      ->check(CLI::IsMember({"2pc", "3pc", "mixed"}))
      ->capture_default_str();
  std::vector<std::string> plants = atomq::sim::Plants();
  app.add_option("--plant", plant, "switch on a deliberately broken behaviour")
      ->check(CLI::IsMember(plants));
  app.add_flag("--expect_violation", expect_violation,
               "succeed only if some seed finds a violation (for --plant)");
  app.add_option("--max_failures", max_failures, "stop after this many failing seeds")
      ->capture_default_str();
  app.add_flag("--verbose", verbose, "print the event trace of each seed (for replays)");
  int replicas = 1;
  app.add_option("--replicas", replicas,
                 "replicas of each participant and of the coordinator: 1 (one disk) or 3 (a "
                 "group on the real engine)")
      ->check(CLI::IsMember({1, 3}))
      ->capture_default_str();
  bool wipes = false;
  app.add_flag("--wipes", wipes,
               "with --replicas: one replica of each group may lose its disk and restart empty "
               "under its old id");
  bool membership = false;
  app.add_flag("--membership", membership,
               "with --replicas: one replica of each group may lose its disk and be replaced by "
               "a new member (added, promoted, the old one removed)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  (void)seed_given;
  g_expect_violation = expect_violation;
  std::signal(SIGABRT, OnAbort);

  atomq::sim::Options options;
  options.mode = protocol == "2pc"   ? atomq::sim::ProtocolMode::k2pc
                 : protocol == "3pc" ? atomq::sim::ProtocolMode::k3pc
                                     : atomq::sim::ProtocolMode::kMixed;
  options.plant = *atomq::ParsePlant(plant);
  options.verbose = verbose;
  options.replicas = replicas;
  options.wipes = wipes;
  options.membership = membership;

  uint64_t run = 0, txns = 0, commits = 0, aborts = 0, violations = 0, blocked = 0, failed = 0;
  uint64_t steps = 0, one_phase = 0, collected = 0, copies = 0, leaderships = 0;
  uint64_t caught = 0;  // seeds with a safety violation
  // One digest of every seed's event trace: a change that claims to keep
  // behaviour (a refactoring) must keep it equal over the same seeds.
  uint64_t digest = 0;
  for (uint64_t s = first; s < first + seeds; ++s) {
    options.seed = s;
    std::snprintf(g_replay, sizeof(g_replay), "%s", atomq::sim::ReplayCommand(options).c_str());
    atomq::sim::Result r = atomq::sim::RunSeed(options);
    ++run;
    digest = digest * 1099511628211ull ^ r.trace_hash;
    txns += r.txns;
    commits += r.commits;
    aborts += r.aborts;
    one_phase += r.one_phase_commits;
    collected += r.outcomes_collected;
    steps += r.steps;
    copies += r.state_copies;
    leaderships += r.leaderships;
    violations += r.violations.size();
    blocked += r.blocked.empty() ? 0 : 1;
    if (r.violations.empty() && r.blocked.empty()) continue;
    ++failed;
    caught += r.violations.empty() ? 0 : 1;
    std::string what = !r.violations.empty() ? r.violations.front() : r.blocked.front();
    std::printf("FAIL seed=%llu: %s (%zu violations, %zu blocked) replay: %s\n",
                static_cast<unsigned long long>(s), what.c_str(), r.violations.size(),
                r.blocked.size(), atomq::sim::ReplayCommand(options).c_str());
    if (verbose) {
      for (const std::string& v : r.violations) std::printf("  violation: %s\n", v.c_str());
      for (const std::string& b : r.blocked) std::printf("  blocked: %s\n", b.c_str());
    }
    std::fflush(stdout);
    if ((expect_violation ? caught : failed) >= max_failures) break;
  }
  std::printf(
      "seeds %llu (protocol %s%s%s): transactions %llu, commits %llu (one phase %llu), aborts "
      "%llu, outcomes collected %llu, steps %llu, violations %llu, runs still blocked %llu, trace "
      "digest %016llx\n",
      static_cast<unsigned long long>(run), protocol.c_str(), plant.empty() ? "" : ", plant ",
      plant.c_str(), static_cast<unsigned long long>(txns),
      static_cast<unsigned long long>(commits), static_cast<unsigned long long>(one_phase),
      static_cast<unsigned long long>(aborts), static_cast<unsigned long long>(collected),
      static_cast<unsigned long long>(steps), static_cast<unsigned long long>(violations),
      static_cast<unsigned long long>(blocked), static_cast<unsigned long long>(digest));
  if (replicas > 1) {
    std::printf("replica groups: leaderships %llu, state copies %llu\n",
                static_cast<unsigned long long>(leaderships),
                static_cast<unsigned long long>(copies));
  }
  if (expect_violation) {
    if (caught == 0) {
      std::printf("the planted bug was NOT caught in %llu seeds\n",
                  static_cast<unsigned long long>(run));
      return 1;
    }
    std::printf("the planted bug was caught\n");
    return 0;
  }
  return failed == 0 ? 0 : 1;
}
