#include "tests/process/tcp_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <set>
#include <vector>

namespace atomq::testing {
namespace {

sockaddr_in Loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

// Writes all of `n` bytes; false when the peer is gone.
bool WriteAll(int fd, const char* p, ssize_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, static_cast<size_t>(n), MSG_NOSIGNAL);
    if (w <= 0) return false;
    p += w;
    n -= w;
  }
  return true;
}

}  // namespace

TcpProxy::TcpProxy(int port, int target) : target_(target) {
  listener_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a = Loopback(port);
  bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  listen(listener_, 64);
  socklen_t len = sizeof(a);
  getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  thread_ = std::thread([this] { Run(); });
}

TcpProxy::~TcpProxy() {
  stop_ = true;
  thread_.join();
  close(listener_);
}

void TcpProxy::Run() {
  std::map<int, int> other;  // each end of a forwarded connection -> the other end
  std::set<int> silenced;    // ends left open with nothing read from them
  auto drop = [&](int fd) {
    auto it = other.find(fd);
    if (it == other.end()) return;
    const int peer = it->second;
    close(fd);
    close(peer);
    other.erase(fd);
    other.erase(peer);
    silenced.erase(fd);
    silenced.erase(peer);
  };
  while (!stop_) {
    if (cut_) {
      while (!other.empty()) drop(other.begin()->first);
    }
    if (silence_.exchange(false)) {
      for (const auto& [fd, peer] : other) silenced.insert(fd);
    }
    std::vector<pollfd> fds{{listener_, POLLIN, 0}};
    for (const auto& [fd, peer] : other) {
      if (silenced.count(fd) == 0) fds.push_back({fd, POLLIN, 0});
    }
    if (poll(fds.data(), fds.size(), 20) <= 0) continue;
    if (fds[0].revents & POLLIN) {
      int in = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (in >= 0 && cut_) {
        close(in);
      } else if (in >= 0) {
        int out = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in t = Loopback(target_);
        if (connect(out, reinterpret_cast<sockaddr*>(&t), sizeof(t)) != 0) {
          close(in);
          close(out);
        } else {
          other[in] = out;
          other[out] = in;
        }
      }
    }
    for (size_t i = 1; i < fds.size(); ++i) {
      if (fds[i].revents == 0 || other.count(fds[i].fd) == 0) continue;
      char buf[65536];
      ssize_t n = recv(fds[i].fd, buf, sizeof(buf), 0);
      if (n <= 0 || !WriteAll(other[fds[i].fd], buf, n)) drop(fds[i].fd);
    }
  }
  while (!other.empty()) drop(other.begin()->first);
}

}  // namespace atomq::testing
