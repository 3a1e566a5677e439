// Prometheus text exposition over HTTP (GET /metrics), on its own port.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/storage.h"

namespace httplib {
class Server;
}

namespace atomq {

// Appends one sample in Prometheus text format ("# TYPE" line included once
// per call; call once per metric name).
void AppendMetric(std::string* out, const std::string& name, const std::string& type,
                  const std::string& help, double value, const std::string& labels = "");
// atomq_storage_fsyncs_total, _batches_total, _write_failures_total, and
// the atomq_storage_fsync_seconds histogram.
void AppendStorageMetrics(std::string* out, const StorageStats& stats);

// The version atomq_build_info reports (main sets it from ATOMQ_VERSION).
void SetBuildVersion(const std::string& version);
// atomq_build_info{role, version}, the free and total bytes of the
// filesystem holding `data_dir`, and ProcessMetrics().
void AppendServerMetrics(std::string* out, const std::string& role, const std::string& data_dir);

// process_cpu_seconds_total, process_resident_memory_bytes,
// process_max_resident_memory_bytes of this process, from /proc.
std::string ProcessMetrics();

// What every HTTP server here (/metrics, the web console) does: binds
// without SO_REUSEPORT, which httplib sets (a port in use would be shared,
// not refused), ...
void RefuseSharedPort(httplib::Server* server);
// ... and stops: httplib's stop() does nothing before its listening loop
// has started, which would then run for good. `ended`: that loop returned.
void StopHttpServer(httplib::Server* server, const std::atomic<bool>& ended);

class MetricsServer {
 public:
  // Serves GET /metrics on `listen` (host:port) with whatever `render`
  // returns. FAILED_PRECONDITION if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen,
                                                              std::function<std::string()> render);
  ~MetricsServer();

 private:
  MetricsServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::atomic<bool> ended_{false};  // the listening loop returned
  std::thread thread_;
};

}  // namespace atomq
