#include "common/grouped_reports.h"

namespace atomq {

namespace {
// The group being reported on this thread, and whose it is.
thread_local const GroupedReports* t_reports_owner = nullptr;
thread_local std::vector<GroupedReports::Report>* t_reports = nullptr;
}  // namespace

void GroupedReports::Install(Storage* storage, std::function<void(std::vector<Report>&)> flush) {
  storage->SetGroupHook([this, flush = std::move(flush)](const std::function<void()>& run) {
    std::vector<Report> reports;
    const GroupedReports* prev_owner = t_reports_owner;
    std::vector<Report>* prev = t_reports;
    t_reports_owner = this;
    t_reports = &reports;
    run();
    t_reports_owner = prev_owner;
    t_reports = prev;
    if (!reports.empty()) flush(reports);
  });
}

bool GroupedReports::Collect(uint64_t token, const absl::Status& status) {
  if (t_reports_owner != this) return false;
  t_reports->emplace_back(token, status);
  return true;
}

}  // namespace atomq
