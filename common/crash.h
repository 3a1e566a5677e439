// Named crash points for crash tests. With ATOMQ_CRASH_AT=<point> (or
// <point>:<n> for the n-th time, 1-based) in the environment, the process
// _exit(86)s when it reaches that point, without flushing or unwinding: what
// is on disk is all that survives, as after a power cut.
//
// Points (README lists them):
//   coordinator: after-prepare-sent, after-decision-logged, after-staged-logged,
//                mid-commit-fanout, after-precommit-sent
//   participant: after-prepare-logged, before-vote-sent,
//                after-commit-applied-before-ack
#pragma once

#include <string_view>

namespace atomq {

inline constexpr int kCrashExitCode = 86;

// Reads ATOMQ_CRASH_AT once. Call at startup before threads start.
void InitCrashPoints();
// Exits if `point` is the armed point (and its count is reached).
void CrashPoint(std::string_view point);
// Whether `point` is armed, for adapters that must do extra work (such as
// decoding a record) only to find out whether they reached it.
bool CrashArmed(std::string_view point);

}  // namespace atomq
