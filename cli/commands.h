// atomqctl's subcommands. Each Add* registers its subcommands, in the order
// --help lists them, with a callback that runs the command and stores its
// exit status in `*rc`; `g` and `rc` must outlive the parse.
#pragma once

#include "CLI/CLI.hpp"
#include "cli/ctl_common.h"

namespace atomq::ctl {

// txn exec, list, show and resolve.
void AddTxnCommands(CLI::App* txn, const Globals& g, int* rc);

// Interactive transactions: txn begin (coordinator), stage (participant),
// commit and rollback (coordinator).
void AddInteractiveTxnCommands(CLI::App* txn, const Globals& g, int* rc);

// queue create, delete, purge, list, info, send, receive, ack and nack.
void AddQueueCommands(CLI::App* queue, const Globals& g, int* rc);

// cluster status and transfer: the replicas of a group.
void AddClusterCommands(CLI::App* cluster, const Globals& g, int* rc);

// verify, backup and restore: data files read without their server.
void AddDataDirCommands(CLI::App& app, int* rc);

// completion bash: a completion script for every command and flag of `app`.
void AddCompletionCommand(CLI::App& app, int* rc);

}  // namespace atomq::ctl
