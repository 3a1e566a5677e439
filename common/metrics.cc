#include "common/metrics.h"

#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "common/histogram.h"
#include "httplib.h"

namespace atomq {

void AppendStorageMetrics(std::string* out, const StorageStats& stats) {
  AppendMetric(out, "atomq_storage_fsyncs_total", "counter",
               "LMDB write transactions committed (one fsync each).", stats.commits);
  AppendMetric(out, "atomq_storage_batches_total", "counter", "Batches written.", stats.batches);
  AppendMetric(out, "atomq_storage_write_failures_total", "counter", "Failed batches.",
               stats.failures);
  if (stats.commit_seconds != nullptr) {
    stats.commit_seconds->Render(out, "atomq_storage_fsync_seconds",
                                 "Time to write and fsync one LMDB transaction (a group commit).");
  }
}

namespace {
std::string& BuildVersion() {
  static std::string* v = new std::string("unknown");
  return *v;
}
}  // namespace

void SetBuildVersion(const std::string& version) { BuildVersion() = version; }

void AppendServerMetrics(std::string* out, const std::string& role, const std::string& data_dir) {
  AppendMetric(out, "atomq_build_info", "gauge", "Always 1: the version this process runs.", 1,
               absl::StrCat("role=\"", role, "\",version=\"", BuildVersion(), "\""));
  struct statvfs fs {};
  if (!data_dir.empty() && statvfs(data_dir.c_str(), &fs) == 0) {
    AppendMetric(out, "atomq_data_dir_available_bytes", "gauge",
                 "Bytes free to this process on the filesystem holding --data_dir.",
                 double(fs.f_bavail) * double(fs.f_frsize));
    AppendMetric(out, "atomq_data_dir_size_bytes", "gauge",
                 "Size of the filesystem holding --data_dir.",
                 double(fs.f_blocks) * double(fs.f_frsize));
  }
  *out += ProcessMetrics();
}

void AppendMetric(std::string* out, const std::string& name, const std::string& type,
                  const std::string& help, double value, const std::string& labels) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  absl::StrAppend(out, name, labels.empty() ? "" : "{" + labels + "}", " ",
                  absl::StrFormat("%.17g", value), "\n");
}

std::string ProcessMetrics() {
  std::string out;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  double cpu =
      ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  AppendMetric(&out, "process_cpu_seconds_total", "counter", "User and system CPU seconds.", cpu);
  double rss = 0;
  std::ifstream statm("/proc/self/statm");
  uint64_t pages_total = 0, pages_rss = 0;
  if (statm >> pages_total >> pages_rss) rss = double(pages_rss) * sysconf(_SC_PAGESIZE);
  AppendMetric(&out, "process_resident_memory_bytes", "gauge", "Resident memory.", rss);
  AppendMetric(&out, "process_max_resident_memory_bytes", "gauge", "Peak resident memory.",
               double(ru.ru_maxrss) * 1024);
  // Resident memory split: anonymous (the process's own heap and stacks) and
  // file-backed (mostly LMDB's map: page cache that tracks the data's size).
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    double kb = 0;
    if (absl::StartsWith(line, "RssAnon:") &&
        absl::SimpleAtod(absl::StripAsciiWhitespace(absl::StripSuffix(line.substr(8), "kB")),
                         &kb)) {
      AppendMetric(&out, "process_resident_anon_memory_bytes", "gauge",
                   "Anonymous resident memory (heap, stacks).", kb * 1024);
    } else if (absl::StartsWith(line, "RssFile:") &&
               absl::SimpleAtod(absl::StripAsciiWhitespace(absl::StripSuffix(line.substr(8), "kB")),
                                &kb)) {
      AppendMetric(&out, "process_resident_file_memory_bytes", "gauge",
                   "File-backed resident memory (mapped LMDB pages, binaries).", kb * 1024);
    }
  }
  return out;
}

void RefuseSharedPort(httplib::Server* server) {
  server->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
}

void StopHttpServer(httplib::Server* server, const std::atomic<bool>& ended) {
  while (!ended && !server->is_running()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  server->stop();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen, std::function<std::string()> render) {
  size_t colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", listen, "\": want host:port"));
  }
  std::unique_ptr<MetricsServer> m(new MetricsServer);
  m->server_ = std::make_unique<httplib::Server>();
  RefuseSharedPort(m->server_.get());
  m->server_->Get("/metrics", [render](const httplib::Request&, httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4");
  });
  if (!m->server_->bind_to_port(listen.substr(0, colon).c_str(), port)) {
    return absl::FailedPreconditionError(absl::StrCat("cannot listen on ", listen, " for metrics"));
  }
  httplib::Server* s = m->server_.get();
  std::atomic<bool>* ended = &m->ended_;
  m->thread_ = std::thread([s, ended] {
    s->listen_after_bind();
    *ended = true;
  });
  return m;
}

MetricsServer::~MetricsServer() {
  if (!thread_.joinable()) return;  // never bound
  StopHttpServer(server_.get(), ended_);
  thread_.join();
}

}  // namespace atomq
