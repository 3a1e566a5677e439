// atomqctl completion bash: a completion script made from the commands and
// flags as registered, so it cannot fall behind them.
#include <cstdio>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"

namespace atomq::ctl {
namespace {

// Each command's path ("atomqctl txn list") and the words that may follow
// it: its subcommands, its flags and the global ones.
void Walk(const CLI::App& a, const std::string& path, const std::set<std::string>& global,
          std::vector<std::pair<std::string, std::string>>* out) {
  const auto subs = a.get_subcommands([](const CLI::App*) { return true; });
  std::set<std::string> flags = global;
  for (const CLI::Option* o : a.get_options()) {
    for (const std::string& name : o->get_lnames()) flags.insert("--" + name);
  }
  std::string words;
  for (const CLI::App* sub : subs) absl::StrAppend(&words, " ", sub->get_name());
  for (const std::string& f : flags) absl::StrAppend(&words, " ", f);
  out->emplace_back(path, words);
  for (const CLI::App* sub : subs)
    Walk(*sub, absl::StrCat(path, " ", sub->get_name()), global, out);
}

void PrintBash(const CLI::App& root) {
  std::vector<std::pair<std::string, std::string>> words;
  std::set<std::string> global;
  for (const CLI::Option* o : root.get_options()) {
    for (const std::string& name : o->get_lnames()) global.insert("--" + name);
  }
  Walk(root, "atomqctl", global, &words);
  std::printf(
      "# bash completion for atomqctl: atomqctl completion bash > "
      "/etc/bash_completion.d/atomqctl\n"
      "declare -gA _atomqctl_words=(\n");
  for (const auto& [path, w] : words) std::printf("  [\"%s\"]=\"%s\"\n", path.c_str(), w.c_str());
  std::printf(
      ")\n"
      "_atomqctl() {\n"
      "  local path=atomqctl w i\n"
      "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
      "    w=${COMP_WORDS[i]}\n"
      "    [[ $w == -* ]] && continue\n"
      "    [[ -n ${_atomqctl_words[\"$path $w\"]+x} ]] && path=\"$path $w\"\n"
      "  done\n"
      "  COMPREPLY=($(compgen -W \"${_atomqctl_words[$path]}\" -- \"${COMP_WORDS[COMP_CWORD]}\"))\n"
      "}\n"
      "complete -F _atomqctl atomqctl\n");
}

}  // namespace

void AddCompletionCommand(CLI::App& app, int* rc) {
  CLI::App* completion = app.add_subcommand("completion", "print a shell completion script");
  completion->require_subcommand(1);
  CLI::App* bash = completion->add_subcommand("bash",
                                              "for bash: source it, or put it in "
                                              "/etc/bash_completion.d/atomqctl");
  bash->callback([&app, rc] {
    PrintBash(app);
    *rc = 0;
  });
}

}  // namespace atomq::ctl
