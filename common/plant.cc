#include "common/plant.h"

#include <iterator>

namespace atomq {
namespace {

struct Named {
  Plant plant;
  const char* name;
};

constexpr Named kPlants[] = {
    {Plant::kCommitWithoutVotes, "commit-without-votes"},
    {Plant::kReplyBeforeDurable, "reply-before-durable"},
    {Plant::kLeaderIgnoresAccepted, "leader-ignores-accepted"},
    {Plant::kForgetPrepared, "forget-prepared"},
    {Plant::kOnePhaseMulti, "one-phase-multi"},
    {Plant::kOnePhasePresumedAbort, "one-phase-presumed-abort"},
    {Plant::kForgetBeforeEnd, "forget-before-end"},
    {Plant::kPreparingPresumedAbort, "preparing-presumed-abort"},
    {Plant::kReplyBeforeReplicated, "reply-before-replicated"},
    {Plant::kRejoinWithAmnesia, "rejoin-with-amnesia"},
    {Plant::kActOnLostWrite, "act-on-lost-write"},
};

}  // namespace

const char* PlantName(Plant plant) {
  for (const Named& n : kPlants) {
    if (n.plant == plant) return n.name;
  }
  return "";
}

std::optional<Plant> ParsePlant(const std::string& name) {
  if (name.empty()) return Plant::kNone;
  for (const Named& n : kPlants) {
    if (name == n.name) return n.plant;
  }
  return std::nullopt;
}

const std::vector<std::string>& PlantNames() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const Named& n : kPlants) v.push_back(n.name);
    return v;
  }();
  return names;
}

}  // namespace atomq
