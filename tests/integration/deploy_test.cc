// Tests of the deployment kit in deploy/ (ctest -L deploy).
//
// Static checks (DeployManifests, DeployPrometheus, DeployMetrics): every YAML
// file parses (yaml-cpp); the ConfigMap's embedded Bulwark configuration passes
// `bulwark --validate`; the Deployment has the probes, security context,
// resources and grace period the kit promises; the Service targets the sidecar;
// the PodMonitor and the plain scrape config select the admin port; every
// metric and label the dashboard and the alerts use is one of SPEC section 5
// (the README's table, checked against ../shared/SPEC.md when present).
//
// DeployPrometheusE2E: the demo upstream, bulwark and a real Prometheus
// (Debian's /usr/bin/prometheus) on 127.0.0.1, the alerts of
// deploy/prometheus/alerts.yaml with their `for:` shortened to 0s. Traffic
// trips the rate limiter and the breaker; Prometheus must show the series and
// fire every alert of the kit in turn; every dashboard query must run.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/process.h"
#include "yaml-cpp/yaml.h"

#ifndef BULWARK_SOURCE_DIR
#error "BULWARK_SOURCE_DIR must be defined (the source tree, for deploy/)"
#endif

namespace bulwark::test {
namespace {

namespace fs = std::filesystem;

std::string SourcePath(const std::string& relative) {
  return absl::StrCat(BULWARK_SOURCE_DIR, "/", relative);
}

std::string Slurp(const std::string& path) {
  absl::StatusOr<std::string> content = ReadFile(path);
  EXPECT_TRUE(content.ok()) << path << ": " << content.status();
  return content.ok() ? *content : "";
}

// The first document of a YAML file (fails the test if it does not parse).
// Nodes are only ever read through const references here: yaml-cpp's non-const
// operator[] inserts missing keys and Node::operator= rewrites the node it was
// bound to.
YAML::Node LoadYaml(const std::string& relative) {
  try {
    return YAML::LoadFile(SourcePath(relative));
  } catch (const YAML::Exception& e) {
    ADD_FAILURE() << relative << ": " << e.what();
    return YAML::Node();
  }
}

std::string Str(const YAML::Node& node) {
  return node.IsDefined() && node.IsScalar() ? node.as<std::string>() : "";
}

// node[k1][k2]...: an undefined node as soon as a key is missing or a level is
// no map.
YAML::Node At(const YAML::Node& node) { return node; }
template <typename... Rest>
YAML::Node At(const YAML::Node& node, const char* key, const Rest&... rest) {
  if (!node.IsDefined() || !node.IsMap())
    return YAML::Node(YAML::NodeType::Undefined);
  return At(node[key], rest...);
}

std::optional<const YAML::Node> FindByName(const YAML::Node& list,
                                           const std::string& name) {
  if (!list.IsDefined() || !list.IsSequence()) return std::nullopt;
  for (const YAML::Node& item : list) {
    if (Str(item["name"]) == name) return item;
  }
  return std::nullopt;
}

// Runs a binary to completion; returns its exit code (-1 if it did not exit)
// and log.
std::pair<int, std::string> RunToEnd(const std::string& path,
                                     std::vector<std::string> args) {
  auto child = ChildProcess::Start(path, std::move(args));
  if (!child.ok()) return {-1, child.status().ToString()};
  absl::StatusOr<ExitStatus> status = (*child)->Wait(absl::Seconds(60));
  std::string log = (*child)->Log();
  if (!status.ok() || !status->exited) return {-1, log};
  return {status->exit_code, log};
}

// The Bulwark configuration embedded in deploy/kubernetes/configmap.yaml.
std::string ConfigMapBulwarkYaml() {
  const YAML::Node cm = LoadYaml("deploy/kubernetes/configmap.yaml");
  return Str(At(cm, "data", "bulwark.yaml"));
}

// ---------------------------------------------------------------------------------------
// Metric catalogue: the `| \`bulwark_...\` | type | labels |` rows of a
// markdown table.

struct MetricSpec {
  std::string type;
  std::set<std::string> labels;
};

std::map<std::string, MetricSpec> ParseMetricTable(
    const std::string& markdown) {
  std::map<std::string, MetricSpec> out;
  for (absl::string_view line : absl::StrSplit(markdown, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!absl::StartsWith(line, "| `bulwark_")) continue;
    std::vector<std::string> cells = absl::StrSplit(line, '|');
    // "", name, type, labels, [meaning,] ""
    if (cells.size() < 5) continue;
    std::string name(absl::StripAsciiWhitespace(cells[1]));
    absl::StrReplaceAll({{"`", ""}}, &name);
    MetricSpec spec;
    spec.type = std::string(absl::StripAsciiWhitespace(cells[2]));
    for (absl::string_view label : absl::StrSplit(cells[3], ',')) {
      label = absl::StripAsciiWhitespace(label);
      if (!label.empty() && label != "—" && label != "-")
        spec.labels.insert(std::string(label));
    }
    out[name] = spec;
  }
  return out;
}

// The series names a Prometheus query may use: SPEC names (histograms as their
// _bucket, _sum and _count series) and `up`.
struct Catalogue {
  std::map<std::string, MetricSpec> metrics;
  std::set<std::string> series;
  std::set<std::string> labels;
};

const Catalogue& SpecCatalogue() {
  static const Catalogue* catalogue = [] {
    auto* c = new Catalogue();
    c->metrics = ParseMetricTable(Slurp(SourcePath("README.md")));
    for (const auto& [name, spec] : c->metrics) {
      if (spec.type == "histogram") {
        for (const char* suffix : {"_bucket", "_sum", "_count"}) {
          c->series.insert(name + suffix);
        }
      } else {
        c->series.insert(name);
      }
      c->labels.insert(spec.labels.begin(), spec.labels.end());
    }
    c->series.insert("up");
    // Labels added by the scrape (target labels, kubernetes_sd / PodMonitor
    // relabelling) and by histograms.
    for (const char* label :
         {"job", "instance", "namespace", "pod", "container", "app", "le"}) {
      c->labels.insert(label);
    }
    return c;
  }();
  return *catalogue;
}

// Metric names (and label names) used by a PromQL expression. Grafana variables
// ($route, ${x}, $__rate_interval) count as values, not names.
struct PromqlNames {
  std::set<std::string> metrics;
  std::set<std::string> labels;
};

PromqlNames NamesInPromql(std::string expr) {
  PromqlNames out;
  static const std::regex kVariable(R"(\$\{?[A-Za-z0-9_]+\}?)");
  static const std::regex kString(R"("(\\.|[^"\\])*"|'(\\.|[^'\\])*')");
  static const std::regex kMatcherLabel(
      R"(([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=))");
  static const std::regex kBraces(R"(\{[^{}]*\})");
  static const std::regex kRange(R"(\[[^\]]*\])");
  static const std::regex kGrouping(
      R"(\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\))");
  static const std::regex kToken(
      R"([0-9.][A-Za-z0-9_.+-]*|[A-Za-z_:][A-Za-z0-9_:]*)");
  static const std::set<std::string> kKeywords = {
      "and",     "or",  "unless",   "bool",       "offset",      "by",
      "without", "on",  "ignoring", "group_left", "group_right", "inf",
      "nan",     "Inf", "NaN",      "atan2"};

  expr = std::regex_replace(expr, kVariable, "x");
  expr = std::regex_replace(expr, kString, "\"\"");
  for (std::sregex_iterator it(expr.begin(), expr.end(), kBraces), end;
       it != end; ++it) {
    const std::string braces = it->str();
    for (std::sregex_iterator m(braces.begin(), braces.end(), kMatcherLabel);
         m != end; ++m) {
      out.labels.insert((*m)[1].str());
    }
  }
  expr = std::regex_replace(expr, kBraces, " ");
  expr = std::regex_replace(expr, kRange, " ");
  for (std::sregex_iterator it(expr.begin(), expr.end(), kGrouping), end;
       it != end; ++it) {
    for (absl::string_view label : absl::StrSplit((*it)[2].str(), ',')) {
      label = absl::StripAsciiWhitespace(label);
      if (!label.empty()) out.labels.insert(std::string(label));
    }
  }
  expr = std::regex_replace(expr, kGrouping, " ");
  for (std::sregex_iterator it(expr.begin(), expr.end(), kToken), end;
       it != end; ++it) {
    const std::string token = it->str();
    if (absl::ascii_isdigit(token[0]) || token[0] == '.')
      continue;  // a number or duration
    if (kKeywords.contains(token)) continue;
    const size_t after = it->position() + token.size();
    const size_t next = expr.find_first_not_of(" \t\n", after);
    if (next != std::string::npos && expr[next] == '(') continue;  // a function
    out.metrics.insert(token);
  }
  return out;
}

void ExpectKnownNames(const std::string& where, const std::string& expr) {
  const Catalogue& spec = SpecCatalogue();
  PromqlNames names = NamesInPromql(expr);
  EXPECT_FALSE(names.metrics.empty())
      << where << ": no metric found in `" << expr << "`";
  for (const std::string& metric : names.metrics) {
    EXPECT_TRUE(spec.series.contains(metric))
        << where << ": `" << metric
        << "` is not a SPEC section 5 metric (or `up`), in `" << expr << "`";
  }
  for (const std::string& label : names.labels) {
    EXPECT_TRUE(spec.labels.contains(label))
        << where << ": label `" << label
        << "` is not a SPEC section 5 label, in `" << expr << "`";
  }
}

// Every {{label}} of a Grafana legend or {{ $labels.x }} of an alert
// annotation.
void ExpectKnownTemplateLabels(const std::string& where,
                               const std::string& text) {
  static const std::regex kLegend(R"(\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\})");
  static const std::regex kAnnotation(R"(\$labels\.([A-Za-z_][A-Za-z0-9_]*))");
  const Catalogue& spec = SpecCatalogue();
  for (const std::regex* re : {&kLegend, &kAnnotation}) {
    for (std::sregex_iterator it(text.begin(), text.end(), *re), end; it != end;
         ++it) {
      EXPECT_TRUE(spec.labels.contains((*it)[1].str()))
          << where << ": template label `" << (*it)[1].str()
          << "` is not a known label";
    }
  }
}

// All panels of a dashboard, rows' nested panels included.
void CollectPanels(const YAML::Node& panels, std::vector<YAML::Node>* out) {
  if (!panels.IsDefined() || !panels.IsSequence()) return;
  for (const YAML::Node& panel : panels) {
    out->push_back(panel);
    CollectPanels(panel["panels"], out);
  }
}

struct DashboardQuery {
  std::string panel;
  std::string expr;
  std::string legend;
};

std::vector<DashboardQuery> DashboardQueries(const YAML::Node& dashboard) {
  std::vector<YAML::Node> panels;
  CollectPanels(dashboard["panels"], &panels);
  std::vector<DashboardQuery> out;
  for (const YAML::Node& panel : panels) {
    const YAML::Node targets = panel["targets"];
    if (!targets.IsDefined()) continue;
    for (const YAML::Node& target : targets) {
      out.push_back({Str(panel["title"]), Str(target["expr"]),
                     Str(target["legendFormat"])});
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------

TEST(DeployManifests, EveryYamlFileParses) {
  int files = 0;
  for (const auto& entry :
       fs::recursive_directory_iterator(SourcePath("deploy"))) {
    const std::string path = entry.path().string();
    if (!entry.is_regular_file()) continue;
    if (absl::StrContains(path, "/node_modules/")) continue;
    const std::string ext = entry.path().extension().string();
    if (ext != ".yaml" && ext != ".yml" && ext != ".json") continue;
    ++files;
    try {
      std::vector<YAML::Node> docs = YAML::LoadAllFromFile(path);
      EXPECT_FALSE(docs.empty()) << path << ": empty";
      for (const YAML::Node& doc : docs) {
        EXPECT_TRUE(doc.IsMap()) << path << ": a document is not a mapping";
      }
    } catch (const YAML::Exception& e) {
      ADD_FAILURE() << path << ": " << e.what();
    }
  }
  // kubernetes (5), prometheus (3), grafana (1), docker example config, schema
  // package.
  EXPECT_GE(files, 11);
}

TEST(DeployManifests, KustomizationListsEveryManifest) {
  const YAML::Node k = LoadYaml("deploy/kubernetes/kustomization.yaml");
  EXPECT_EQ(Str(k["kind"]), "Kustomization");
  std::set<std::string> listed;
  for (const YAML::Node& r : k["resources"]) listed.insert(Str(r));
  for (const auto& entry :
       fs::directory_iterator(SourcePath("deploy/kubernetes"))) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".yaml" || name == "kustomization.yaml")
      continue;
    EXPECT_TRUE(listed.contains(name))
        << name << " is not in kustomization.yaml";
  }
  for (const std::string& name : listed) {
    EXPECT_TRUE(fs::exists(SourcePath("deploy/kubernetes/" + name)))
        << name << " missing";
  }
  // The image name of deployment.yaml is the one kustomize rewrites.
  ASSERT_TRUE(k["images"].IsSequence());
  const YAML::Node d = LoadYaml("deploy/kubernetes/deployment.yaml");
  auto bulwark =
      FindByName(At(d, "spec", "template", "spec", "containers"), "bulwark");
  ASSERT_TRUE(bulwark.has_value());
  const std::string image = Str((*bulwark)["image"]);
  EXPECT_EQ(image.substr(0, image.find(':')), Str(k["images"][0]["name"]));
}

TEST(DeployManifests, ConfigMapConfigIsValidForBulwark) {
  const std::string config = ConfigMapBulwarkYaml();
  ASSERT_FALSE(config.empty()) << "configmap.yaml has no data[bulwark.yaml]";
  const std::string dir = TempDir();
  const std::string path = dir + "/bulwark.yaml";
  ASSERT_TRUE(WriteFile(path, config).ok());
  auto [code, log] =
      RunToEnd(BinaryPath("bulwark"), {"--config", path, "--validate"});
  EXPECT_EQ(code, 0) << "bulwark --validate of the ConfigMap's bulwark.yaml:\n"
                     << log;

  // What the manifests around it rely on.
  const YAML::Node c = YAML::Load(config);
  EXPECT_EQ(Str(At(c, "listener", "address")), "0.0.0.0:15000");
  EXPECT_EQ(Str(At(c, "admin", "address")), "0.0.0.0:15001");
  EXPECT_EQ(Str(c["drain_timeout"]), "20s");
  ASSERT_TRUE(c["clusters"].IsSequence());
  EXPECT_EQ(Str(c["clusters"][0]["endpoints"][0]), "127.0.0.1:50051");
  ASSERT_TRUE(c["routes"].IsSequence());
  bool any_policy = false;
  for (const YAML::Node& route : c["routes"]) {
    for (const char* policy :
         {"rate_limit", "circuit_breaker", "concurrency", "singleflight"}) {
      any_policy |= route[policy].IsDefined();
    }
  }
  EXPECT_TRUE(any_policy) << "the example routes have no policy";

  // The check is not vacuous: a broken copy is refused.
  std::string broken = config;
  ASSERT_TRUE(absl::StrContains(broken, "burst: 400"));
  absl::StrReplaceAll({{"burst: 400", "burst: 0"}}, &broken);
  ASSERT_TRUE(WriteFile(path, broken).ok());
  auto [broken_code, broken_log] =
      RunToEnd(BinaryPath("bulwark"), {"--config", path, "--validate"});
  EXPECT_EQ(broken_code, 1) << broken_log;
  EXPECT_THAT(broken_log, testing::HasSubstr("burst"));
}

TEST(DeployManifests, DockerExampleConfigIsValid) {
  auto [code, log] = RunToEnd(
      BinaryPath("bulwark"),
      {"--config", SourcePath("deploy/docker/bulwark.yaml"), "--validate"});
  EXPECT_EQ(code, 0) << log;
}

TEST(DeployManifests, DeploymentHasProbesSecurityResourcesAndGrace) {
  const YAML::Node d = LoadYaml("deploy/kubernetes/deployment.yaml");
  EXPECT_EQ(Str(d["apiVersion"]), "apps/v1");
  EXPECT_EQ(Str(d["kind"]), "Deployment");
  const YAML::Node pod = At(d, "spec", "template", "spec");
  ASSERT_TRUE(pod.IsMap());

  // terminationGracePeriodSeconds above the configured drain_timeout.
  const YAML::Node config = YAML::Load(ConfigMapBulwarkYaml());
  absl::Duration drain;
  ASSERT_TRUE(absl::ParseDuration(Str(config["drain_timeout"]), &drain))
      << Str(config["drain_timeout"]);
  ASSERT_TRUE(pod["terminationGracePeriodSeconds"].IsDefined());
  const int grace = pod["terminationGracePeriodSeconds"].as<int>();
  EXPECT_GT(absl::Seconds(grace), drain)
      << "terminationGracePeriodSeconds " << grace << " <= drain_timeout "
      << drain;

  std::optional<const YAML::Node> bulwark =
      FindByName(pod["containers"], "bulwark");
  ASSERT_TRUE(bulwark.has_value()) << "no container named bulwark";
  EXPECT_GE(pod["containers"].size(), 2u)
      << "an example app container beside the sidecar";
  const YAML::Node& c = *bulwark;

  // Ports.
  std::map<std::string, int> ports;
  for (const YAML::Node& p : c["ports"])
    ports[Str(p["name"])] = p["containerPort"].as<int>();
  EXPECT_EQ(ports["grpc"], 15000);
  EXPECT_EQ(ports["admin"], 15001);
  auto port_of = [&](const YAML::Node& port) {
    const std::string v = Str(port);
    int n = 0;
    return absl::SimpleAtoi(v, &n) ? n : (ports.contains(v) ? ports[v] : -1);
  };

  // Probes on the admin port.
  EXPECT_EQ(Str(At(c, "livenessProbe", "httpGet", "path")), "/healthz");
  EXPECT_EQ(port_of(At(c, "livenessProbe", "httpGet", "port")), 15001);
  EXPECT_EQ(Str(At(c, "readinessProbe", "httpGet", "path")), "/readyz");
  EXPECT_EQ(port_of(At(c, "readinessProbe", "httpGet", "port")), 15001);

  // Resources.
  for (const char* kind : {"requests", "limits"}) {
    for (const char* resource : {"cpu", "memory"}) {
      EXPECT_FALSE(Str(At(c, "resources", kind, resource)).empty())
          << "resources." << kind << "." << resource << " missing";
    }
  }
  // workers (event loops) no more than the CPU limit allows.
  double cpu = 0;
  std::string cpu_limit = Str(At(c, "resources", "limits", "cpu"));
  if (absl::EndsWith(cpu_limit, "m")) {
    ASSERT_TRUE(
        absl::SimpleAtod(cpu_limit.substr(0, cpu_limit.size() - 1), &cpu));
    cpu /= 1000;
  } else {
    ASSERT_TRUE(absl::SimpleAtod(cpu_limit, &cpu)) << cpu_limit;
  }
  ASSERT_TRUE(config["workers"].IsDefined())
      << "set workers: the default counts node cores";
  EXPECT_LE(config["workers"].as<int>(),
            std::max(1, static_cast<int>(std::ceil(cpu))));

  // Security context, on every container.
  for (const YAML::Node& container : pod["containers"]) {
    const std::string name = Str(container["name"]);
    const YAML::Node sc = container["securityContext"];
    const bool non_root =
        sc["runAsNonRoot"].IsDefined()
            ? sc["runAsNonRoot"].as<bool>()
            : At(pod, "securityContext", "runAsNonRoot").as<bool>(false);
    EXPECT_TRUE(non_root) << name << ": runAsNonRoot";
    EXPECT_TRUE(sc["readOnlyRootFilesystem"].as<bool>(false))
        << name << ": readOnlyRootFilesystem";
    EXPECT_FALSE(sc["allowPrivilegeEscalation"].as<bool>(true))
        << name << ": allowPrivilegeEscalation must be false";
    bool drops_all = false;
    for (const YAML::Node& cap : At(sc, "capabilities", "drop"))
      drops_all |= Str(cap) == "ALL";
    EXPECT_TRUE(drops_all) << name << ": capabilities.drop [ALL]";
  }
  // The image's user.
  const YAML::Node uid = At(c, "securityContext", "runAsUser").IsDefined()
                             ? At(c, "securityContext", "runAsUser")
                             : At(pod, "securityContext", "runAsUser");
  EXPECT_EQ(uid.as<int>(-1), 65532);

  // The configuration: a directory mount (no subPath, so ConfigMap edits
  // arrive) of the ConfigMap at /etc/bulwark, read by --config.
  std::string volume;
  for (const YAML::Node& m : c["volumeMounts"]) {
    if (Str(m["mountPath"]) == "/etc/bulwark") {
      volume = Str(m["name"]);
      EXPECT_FALSE(m["subPath"].IsDefined())
          << "subPath mounts never see ConfigMap updates";
    }
  }
  ASSERT_FALSE(volume.empty()) << "nothing mounted at /etc/bulwark";
  std::optional<const YAML::Node> vol = FindByName(pod["volumes"], volume);
  ASSERT_TRUE(vol.has_value());
  const YAML::Node cm = LoadYaml("deploy/kubernetes/configmap.yaml");
  EXPECT_EQ(Str(At(*vol, "configMap", "name")),
            Str(At(cm, "metadata", "name")));
  std::vector<std::string> args;
  for (const YAML::Node& a : c["args"]) args.push_back(Str(a));
  if (!args.empty()) {
    EXPECT_THAT(args,
                testing::ElementsAre("--config", "/etc/bulwark/bulwark.yaml"));
  }
  // No preStop: Bulwark drains on SIGTERM by itself.
  EXPECT_FALSE(At(c, "lifecycle", "preStop").IsDefined());
}

TEST(DeployManifests, ServiceTargetsTheSidecarNotTheApp) {
  const YAML::Node s = LoadYaml("deploy/kubernetes/service.yaml");
  const YAML::Node d = LoadYaml("deploy/kubernetes/deployment.yaml");
  EXPECT_EQ(Str(s["kind"]), "Service");
  const YAML::Node pod_labels = At(d, "spec", "template", "metadata", "labels");
  for (const auto& kv : At(s, "spec", "selector")) {
    EXPECT_EQ(Str(pod_labels[kv.first.as<std::string>()]), Str(kv.second))
        << "selector " << kv.first.as<std::string>()
        << " does not match the pods";
  }
  // Resolve each Service port's targetPort against the containers' ports.
  std::map<std::string, std::pair<std::string, int>>
      named;  // port name -> container, number
  std::map<int, std::string> numbered;
  for (const YAML::Node& c : At(d, "spec", "template", "spec", "containers")) {
    for (const YAML::Node& p : c["ports"]) {
      named[Str(p["name"])] = {Str(c["name"]), p["containerPort"].as<int>()};
      numbered[p["containerPort"].as<int>()] = Str(c["name"]);
    }
  }
  std::optional<const YAML::Node> grpc =
      FindByName(At(s, "spec", "ports"), "grpc");
  ASSERT_TRUE(grpc.has_value()) << "no Service port named grpc";
  const std::string target = Str((*grpc)["targetPort"]);
  int number = 0;
  std::string container;
  if (absl::SimpleAtoi(target, &number)) {
    container = numbered[number];
  } else {
    ASSERT_TRUE(named.contains(target))
        << "targetPort " << target << " names no port";
    std::tie(container, number) = named[target];
  }
  EXPECT_EQ(container, "bulwark");
  EXPECT_EQ(number, 15000);
  for (const YAML::Node& p : At(s, "spec", "ports")) {
    EXPECT_NE(Str(p["targetPort"]), "50051")
        << "a Service port bypasses the sidecar";
    EXPECT_NE(Str(p["targetPort"]), "admin")
        << "the admin port is not for clients";
  }
}

TEST(DeployManifests, PodMonitorScrapesTheAdminPort) {
  const YAML::Node m = LoadYaml("deploy/kubernetes/podmonitor.yaml");
  const YAML::Node d = LoadYaml("deploy/kubernetes/deployment.yaml");
  EXPECT_EQ(Str(m["apiVersion"]), "monitoring.coreos.com/v1");
  EXPECT_EQ(Str(m["kind"]), "PodMonitor");
  // The operator names the job <namespace>/<name>: BulwarkSidecarDown matches
  // .*bulwark.*.
  EXPECT_THAT(Str(At(m, "metadata", "name")), testing::HasSubstr("bulwark"));
  const YAML::Node pod_labels = At(d, "spec", "template", "metadata", "labels");
  for (const auto& kv : At(m, "spec", "selector", "matchLabels")) {
    EXPECT_EQ(Str(pod_labels[kv.first.as<std::string>()]), Str(kv.second));
  }
  const YAML::Node endpoints = At(m, "spec", "podMetricsEndpoints");
  ASSERT_TRUE(endpoints.IsSequence() && endpoints.size() == 1);
  EXPECT_EQ(Str(endpoints[0]["port"]), "admin");
  EXPECT_EQ(Str(endpoints[0]["path"]), "/metrics");
}

// ---------------------------------------------------------------------------------------
// Prometheus relabelling, as Prometheus applies it (keep / drop / replace,
// anchored regexes, `;` separator), run on the targets kubernetes_sd would
// produce.

using Labels = std::map<std::string, std::string>;

std::optional<Labels> Relabel(Labels labels, const YAML::Node& configs) {
  for (const YAML::Node& rc : configs) {
    std::vector<std::string> values;
    for (const YAML::Node& s : rc["source_labels"])
      values.push_back(labels[Str(s)]);
    const std::string joined = absl::StrJoin(
        values, Str(rc["separator"]).empty() ? ";" : Str(rc["separator"]));
    const std::regex re(absl::StrCat(
        "^(?:", Str(rc["regex"]).empty() ? "(.*)" : Str(rc["regex"]), ")$"));
    const std::string action =
        Str(rc["action"]).empty() ? "replace" : Str(rc["action"]);
    const bool match = std::regex_match(joined, re);
    if (action == "keep" && !match) return std::nullopt;
    if (action == "drop" && match) return std::nullopt;
    if (action == "replace" && match) {
      const std::string replacement =
          rc["replacement"].IsDefined() ? Str(rc["replacement"]) : "$1";
      labels[Str(rc["target_label"])] = std::regex_replace(
          joined, re, replacement, std::regex_constants::format_first_only);
    }
  }
  return labels;
}

TEST(DeployPrometheus, ScrapeConfigKeepsOnlyBulwarkAdminPorts) {
  const YAML::Node p = LoadYaml("deploy/prometheus/scrape.yaml");
  std::optional<const YAML::Node> found;
  for (const YAML::Node& j : p["scrape_configs"]) {
    if (!found.has_value() && absl::StrContains(Str(j["job_name"]), "bulwark"))
      found.emplace(j);
  }
  ASSERT_TRUE(found.has_value()) << "no scrape job whose name contains bulwark";
  const YAML::Node& job = *found;
  EXPECT_EQ(
      Str(job["metrics_path"]).empty() ? "/metrics" : Str(job["metrics_path"]),
      "/metrics");
  EXPECT_EQ(Str(job["kubernetes_sd_configs"][0]["role"]), "pod");
  const YAML::Node rcs = job["relabel_configs"];
  auto target = [](std::string container, std::string port_name,
                   std::string address) {
    return Labels{{"__address__", address},
                  {"__meta_kubernetes_namespace", "shop"},
                  {"__meta_kubernetes_pod_name", "orders-7d9f"},
                  {"__meta_kubernetes_pod_phase", "Running"},
                  {"__meta_kubernetes_pod_container_name", container},
                  {"__meta_kubernetes_pod_container_port_name", port_name}};
  };
  // The deployment.yaml layout: the bulwark container's admin port only.
  auto kept = Relabel(target("bulwark", "admin", "10.1.2.3:15001"), rcs);
  ASSERT_TRUE(kept.has_value());
  EXPECT_EQ((*kept)["__address__"], "10.1.2.3:15001");
  EXPECT_EQ((*kept)["namespace"], "shop");
  EXPECT_EQ((*kept)["pod"], "orders-7d9f");
  EXPECT_FALSE(
      Relabel(target("bulwark", "grpc", "10.1.2.3:15000"), rcs).has_value());
  EXPECT_FALSE(
      Relabel(target("app", "admin", "10.1.2.3:8080"), rcs).has_value());
  Labels done = target("bulwark", "admin", "10.1.2.3:15001");
  done["__meta_kubernetes_pod_phase"] = "Succeeded";
  EXPECT_FALSE(Relabel(done, rcs).has_value());
  // Annotated pods: scraped on the annotated port.
  Labels annotated = target("proxy", "http", "10.1.2.4:8080");
  annotated["__meta_kubernetes_pod_annotation_bulwark_io_scrape"] = "true";
  annotated["__meta_kubernetes_pod_annotation_bulwark_io_port"] = "9901";
  auto kept_annotated = Relabel(annotated, rcs);
  ASSERT_TRUE(kept_annotated.has_value());
  EXPECT_EQ((*kept_annotated)["__address__"], "10.1.2.4:9901");
  annotated.erase("__meta_kubernetes_pod_annotation_bulwark_io_port");
  EXPECT_FALSE(Relabel(annotated, rcs).has_value())
      << "scrape annotation without a port";
}

// ---------------------------------------------------------------------------------------

TEST(DeployMetrics, ReadmeCatalogueMatchesSpec) {
  const Catalogue& spec = SpecCatalogue();
  EXPECT_GE(spec.metrics.size(), 16u) << "README.md metric table not found";
  const std::string spec_path = SourcePath("../shared/SPEC.md");
  if (!fs::exists(spec_path)) GTEST_SKIP() << spec_path << " not present";
  std::map<std::string, MetricSpec> from_spec =
      ParseMetricTable(Slurp(spec_path));
  // SPEC metrics of work still open are named in the README's "Not exported
  // yet" paragraph instead of its table; every SPEC metric is in one of them,
  // and nothing is in both.
  const std::string readme = Slurp(SourcePath("README.md"));
  const size_t from = readme.find("Not exported yet");
  // None left: every SPEC metric must then be in the table.
  const std::string planned_text =
      from == std::string::npos
          ? ""
          : readme.substr(from, readme.find("\n\n", from) - from);
  std::set<std::string> planned;
  for (size_t at = planned_text.find("`bulwark_"); at != std::string::npos;
       at = planned_text.find("`bulwark_", at + 1)) {
    const size_t end = planned_text.find('`', at + 1);
    planned.insert(planned_text.substr(at + 1, end - at - 1));
  }
  EXPECT_EQ(from_spec.size(), spec.metrics.size() + planned.size());
  for (const std::string& name : planned) {
    EXPECT_TRUE(from_spec.contains(name)) << name << " is not in SPEC.md";
    EXPECT_FALSE(spec.metrics.contains(name))
        << name << " is both exported and not exported yet";
  }
  for (const auto& [name, m] : from_spec) {
    if (planned.contains(name)) continue;
    ASSERT_TRUE(spec.metrics.contains(name))
        << name << " is in SPEC.md, not in README.md";
    EXPECT_EQ(spec.metrics.at(name).type, m.type) << name;
    EXPECT_EQ(spec.metrics.at(name).labels, m.labels) << name;
  }
}

TEST(DeployMetrics, NameExtractionFindsMetricsAndLabels) {
  PromqlNames n = NamesInPromql(
      "histogram_quantile(0.99, sum by (le) "
      "(rate(bulwark_request_duration_seconds_bucket"
      "{job=~\"$job\", route=~\"$route\"}[$__rate_interval]))) / ignoring "
      "(reason) group_left "
      "sum without (code) (bulwark_requests_total offset 5m) > 0.1 and up == "
      "0");
  EXPECT_EQ(n.metrics,
            (std::set<std::string>{"bulwark_request_duration_seconds_bucket",
                                   "bulwark_requests_total", "up"}));
  EXPECT_EQ(n.labels,
            (std::set<std::string>{"le", "job", "route", "reason", "code"}));
}

TEST(DeployMetrics, DashboardUsesOnlySpecMetricsAndCoversEveryView) {
  const YAML::Node dashboard =
      LoadYaml("deploy/grafana/bulwark-dashboard.json");
  ASSERT_TRUE(dashboard.IsMap());
  EXPECT_FALSE(Str(dashboard["title"]).empty());
  EXPECT_FALSE(Str(dashboard["uid"]).empty());

  // Variables: a datasource and $route.
  std::set<std::string> variables;
  for (const YAML::Node& v : At(dashboard, "templating", "list")) {
    variables.insert(Str(v["name"]));
    const YAML::Node query = v["query"];
    const std::string text = query.IsMap() ? Str(query["query"]) : Str(query);
    static const std::regex kMetric(R"(bulwark_[a-z_]+)");
    for (std::sregex_iterator it(text.begin(), text.end(), kMetric), end;
         it != end; ++it) {
      EXPECT_TRUE(SpecCatalogue().series.contains(it->str()))
          << "variable " << Str(v["name"]) << ": " << it->str();
    }
  }
  EXPECT_TRUE(variables.contains("route"));
  EXPECT_TRUE(variables.contains("datasource"));

  std::vector<YAML::Node> panels;
  CollectPanels(dashboard["panels"], &panels);
  std::set<int> ids;
  bool route_row_repeats = false;
  for (const YAML::Node& panel : panels) {
    EXPECT_TRUE(ids.insert(panel["id"].as<int>()).second)
        << "duplicate panel id";
    EXPECT_TRUE(At(panel, "gridPos", "w").IsDefined()) << Str(panel["title"]);
    if (Str(panel["type"]) == "row" && Str(panel["repeat"]) == "route")
      route_row_repeats = true;
    if (panel["targets"].IsDefined()) {
      EXPECT_EQ(Str(At(panel, "datasource", "uid")), "${datasource}")
          << Str(panel["title"]);
    }
  }
  EXPECT_TRUE(route_row_repeats) << "a row repeated per $route";

  std::vector<DashboardQuery> queries = DashboardQueries(dashboard);
  ASSERT_FALSE(queries.empty());
  std::string all;
  for (const DashboardQuery& q : queries) {
    ExpectKnownNames("dashboard panel \"" + q.panel + "\"", q.expr);
    ExpectKnownTemplateLabels("dashboard panel \"" + q.panel + "\"", q.legend);
    absl::StrAppend(&all, q.expr, "\n");
  }
  // The views the kit promises (issue 8): per route RPS by code, p50/p99,
  // rejections by reason, breaker state, in flight and queued, coalesced share;
  // endpoint health.
  for (const char* needle :
       {"sum by (code) (rate(bulwark_requests_total{",
        "histogram_quantile(0.5,", "histogram_quantile(0.99,",
        "rate(bulwark_request_duration_seconds_bucket{",
        "sum by (reason) (rate(bulwark_rejections_total{",
        "bulwark_circuit_breaker_state{", "bulwark_concurrency_in_flight{",
        "bulwark_concurrency_queued{", "bulwark_concurrency_limit{",
        "sum by (method) (rate(bulwark_method_requests_total{",
        "rate(bulwark_method_request_duration_seconds_bucket{",
        "role=\"follower\"", "role=~\"leader|follower\"",
        "bulwark_endpoint_healthy{", "route=~\"$route\""}) {
    EXPECT_THAT(all, testing::HasSubstr(needle));
  }
}

TEST(DeployMetrics, AlertsUseOnlySpecMetricsAndAreAllTested) {
  const YAML::Node rules = LoadYaml("deploy/prometheus/alerts.yaml");
  std::map<std::string, std::string> alerts;  // name -> expr
  for (const YAML::Node& group : rules["groups"]) {
    for (const YAML::Node& rule : group["rules"]) {
      const std::string name = Str(rule["alert"]);
      ASSERT_FALSE(name.empty());
      alerts[name] = Str(rule["expr"]);
      ExpectKnownNames("alert " + name, Str(rule["expr"]));
      for (const auto& kv : rule["annotations"]) {
        ExpectKnownTemplateLabels("alert " + name, Str(kv.second));
      }
      EXPECT_FALSE(Str(At(rule, "labels", "severity")).empty())
          << name << ": severity";
    }
  }
  EXPECT_THAT(alerts, testing::UnorderedElementsAre(
                          testing::Key("BulwarkCircuitBreakerOpen"),
                          testing::Key("BulwarkHighRejectionRatio"),
                          testing::Key("BulwarkNoHealthyEndpoint"),
                          testing::Key("BulwarkConfigReloadFailures"),
                          testing::Key("BulwarkSidecarDown"),
                          testing::Key("BulwarkRetryBudgetExhausted"),
                          testing::Key("BulwarkEndpointEjected"),
                          testing::Key("BulwarkRedisErrors")));
  EXPECT_THAT(
      alerts["BulwarkCircuitBreakerOpen"],
      testing::HasSubstr("bulwark_circuit_breaker_state{state=\"open\"}"));
  EXPECT_THAT(alerts["BulwarkHighRejectionRatio"],
              testing::HasSubstr("bulwark_rejections_total"));
  EXPECT_THAT(
      alerts["BulwarkNoHealthyEndpoint"],
      testing::HasSubstr(
          "max by (job, namespace, cluster) (bulwark_endpoint_healthy)"));
  EXPECT_THAT(
      alerts["BulwarkConfigReloadFailures"],
      testing::HasSubstr(
          "increase(bulwark_config_reloads_total{result=\"failure\"}[10m])"));
  EXPECT_THAT(alerts["BulwarkSidecarDown"],
              testing::HasSubstr("up{job=~\".*bulwark.*\"} == 0"));

  // alerts_test.yaml: every alert is seen firing and not firing, and its input
  // series are SPEC metrics.
  const YAML::Node tests = LoadYaml("deploy/prometheus/alerts_test.yaml");
  std::map<std::string, std::pair<int, int>>
      seen;  // alert -> (firing, quiet) cases
  for (const YAML::Node& t : tests["tests"]) {
    for (const YAML::Node& s : t["input_series"]) {
      const std::string series = Str(s["series"]);
      const std::string name = series.substr(0, series.find('{'));
      EXPECT_TRUE(SpecCatalogue().series.contains(name))
          << "alerts_test.yaml: " << series;
    }
    for (const YAML::Node& a : t["alert_rule_test"]) {
      auto& [firing, quiet] = seen[Str(a["alertname"])];
      (a["exp_alerts"].size() > 0 ? firing : quiet)++;
    }
  }
  for (const auto& [name, expr] : alerts) {
    EXPECT_GT(seen[name].first, 0) << name << " is never tested firing";
    EXPECT_GT(seen[name].second, 0) << name << " is never tested not firing";
  }
}

// ---------------------------------------------------------------------------------------
// End to end with a real Prometheus.

std::string UrlEncode(absl::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' ||
        c == '~') {
      out += static_cast<char>(c);
    } else {
      absl::StrAppend(&out, "%", absl::StrFormat("%02X", c));
    }
  }
  return out;
}

class Prometheus {
 public:
  explicit Prometheus(int port) : port_(port) {}

  std::string Get(const std::string& path) {
    int code = 0;
    absl::StatusOr<std::string> body = HttpGet("127.0.0.1", port_, path, &code);
    if (!body.ok()) return "";
    last_ = *body;
    return code == 200 ? *body : "";
  }
  std::string Query(const std::string& promql) {
    return Get("/api/v1/query?query=" + UrlEncode(promql));
  }
  // The query ran (its syntax and functions are valid).
  bool Runs(const std::string& promql) {
    return absl::StrContains(Query(promql), "\"status\":\"success\"");
  }
  // The query returned at least one sample (filter with a comparison to test
  // values).
  bool HasResult(const std::string& promql) {
    const std::string body = Query(promql);
    return absl::StrContains(body, "\"status\":\"success\"") &&
           absl::StrContains(body, "\"result\":[{");
  }
  // /api/v1/alerts lists `name` in state firing.
  bool Firing(const std::string& name) {
    const std::string body = Get("/api/v1/alerts");
    // One chunk per alert object:
    // {"labels":{...},"annotations":{...},"state":"firing",...}
    for (absl::string_view chunk : absl::StrSplit(body, "{\"labels\":")) {
      if (absl::StrContains(chunk,
                            absl::StrCat("\"alertname\":\"", name, "\"")) &&
          absl::StrContains(chunk, "\"state\":\"firing\"")) {
        return true;
      }
    }
    return false;
  }
  const std::string& last() const { return last_; }

 private:
  const int port_;
  std::string last_;
};

// The alerts with every `for:` set to 0s.
std::string AlertsWithoutFor() {
  std::vector<std::string> lines =
      absl::StrSplit(Slurp(SourcePath("deploy/prometheus/alerts.yaml")), '\n');
  int changed = 0;
  for (std::string& line : lines) {
    const size_t indent = line.find_first_not_of(' ');
    if (indent != std::string::npos &&
        absl::StartsWith(line.substr(indent), "for:")) {
      line = line.substr(0, indent) + "for: 0s";
      ++changed;
    }
  }
  EXPECT_GT(changed, 0) << "no `for:` in alerts.yaml";
  return absl::StrJoin(lines, "\n");
}

double MetricValue(const std::string& exposition, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v = 0;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
    }
  }
  return -1;
}

// Failing Echo calls on a thread, one every 100 ms, until Stop (or
// destruction).
class BackgroundCalls {
 public:
  explicit BackgroundCalls(int port)
      : stub_(bulwark::demo::v1::Demo::NewStub(
            grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                grpc::InsecureChannelCredentials()))),
        thread_([this] { Loop(); }) {}
  ~BackgroundCalls() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Loop() {
    while (!stop_) {
      bulwark::demo::v1::EchoRequest request;
      request.set_payload("background");
      request.mutable_fault()->set_status_code(grpc::StatusCode::UNAVAILABLE);
      bulwark::demo::v1::EchoResponse response;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(2));
      stub_->Echo(&ctx, request, &response);
      absl::SleepFor(absl::Milliseconds(100));
    }
  }

  std::unique_ptr<bulwark::demo::v1::Demo::Stub> stub_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST(DeployPrometheusE2E,
     AlertsFireAndDashboardQueriesRunAgainstARealPrometheus) {
  const absl::Time deadline = absl::Now() + absl::Seconds(85);
  auto left = [&] {
    return std::max(absl::ZeroDuration(), deadline - absl::Now());
  };
  const std::string prometheus_bin = "/usr/bin/prometheus";
  if (access(prometheus_bin.c_str(), X_OK) != 0) {
    GTEST_SKIP() << prometheus_bin
                 << " not installed (Debian package prometheus)";
  }
  const std::string dir = TempDir();

  auto upstream = DemoUpstream::Start();
  ASSERT_TRUE(upstream.ok()) << upstream.status();

  // A route that trips at once: 5 tokens, then 1 a second; the breaker opens
  // after 3 failures in a row and stays open for 60s. Health checked every
  // second.
  const int port = PickFreePort();
  const int admin_port = PickFreePort();
  const std::string config_path = dir + "/bulwark.yaml";
  const std::string config = absl::StrCat(
      "listener: { address: \"127.0.0.1:", port, "\" }\n",
      "admin: { address: \"127.0.0.1:", admin_port, "\" }\n",
      "workers: 1\n"
      "drain_timeout: 1s\n"
      "clusters:\n"
      "  - name: demo\n"
      "    endpoints: [\"",
      (*upstream)->address(), "\"]\n",
      "    health_check: { mode: CHECK, interval: 1s, timeout: 500ms, "
      "unhealthy_threshold: 2,"
      " healthy_threshold: 1 }\n"
      "routes:\n"
      "  - name: echo\n"
      "    match: { service: bulwark.demo.v1.Demo, method: Echo }\n"
      "    cluster: demo\n"
      "    rate_limit: { requests_per_second: 1, burst: 5 }\n"
      "    circuit_breaker: { consecutive_failures: 3, open_duration: 60s }\n"
      "    singleflight: { enabled: true }\n"
      "    concurrency: { max_in_flight: 4, max_queued: 4, queue_timeout: 1s "
      "}\n");
  ASSERT_TRUE(WriteFile(config_path, config).ok());
  auto sidecar =
      ChildProcess::Start(BinaryPath("bulwark"), {"--config", config_path});
  ASSERT_TRUE(sidecar.ok()) << sidecar.status();
  ASSERT_TRUE(WaitForTcpPort(port, absl::Seconds(20), sidecar->get()).ok());
  ASSERT_TRUE(
      WaitForTcpPort(admin_port, absl::Seconds(20), sidecar->get()).ok());

  // Prometheus: 1s scrapes and rule evaluations, the kit's alerts without their
  // `for:`.
  const int prom_port = PickFreePort();
  ASSERT_TRUE(WriteFile(dir + "/alerts.yaml", AlertsWithoutFor()).ok());
  ASSERT_TRUE(WriteFile(dir + "/prometheus.yml",
                        absl::StrCat("global:\n"
                                     "  scrape_interval: 1s\n"
                                     "  scrape_timeout: 1s\n"
                                     "  evaluation_interval: 1s\n"
                                     "rule_files: [\"",
                                     dir,
                                     "/alerts.yaml\"]\n"
                                     "scrape_configs:\n"
                                     "  - job_name: bulwark\n"
                                     "    static_configs:\n"
                                     "      - targets: [\"127.0.0.1:",
                                     admin_port, "\"]\n"))
                  .ok());
  ChildOptions prom_options;
  prom_options.stop_grace = absl::Seconds(5);
  auto prometheus_process = ChildProcess::Start(
      prometheus_bin,
      {absl::StrCat("--config.file=", dir, "/prometheus.yml"),
       absl::StrCat("--storage.tsdb.path=", dir, "/tsdb"),
       absl::StrCat("--web.listen-address=127.0.0.1:", prom_port),
       "--log.level=warn"},
      prom_options);
  ASSERT_TRUE(prometheus_process.ok()) << prometheus_process.status();
  Prometheus prom(prom_port);
  ASSERT_TRUE(PollUntil(
      [&] {
        int code = 0;
        return (*prometheus_process)->Running() &&
               HttpGet("127.0.0.1", prom_port, "/-/ready", &code).ok() &&
               code == 200;
      },
      std::min(left(), absl::Seconds(30))))
      << "Prometheus not ready:\n"
      << (*prometheus_process)->Log();

  // Traffic: failing Echo calls (the upstream answers UNAVAILABLE), with
  // bulwark-bench when it is built, topped up with a direct gRPC client if the
  // policies have not acted yet.
  auto metrics = [&] {
    int code = 0;
    auto body = HttpGet("127.0.0.1", admin_port, "/metrics", &code);
    return body.ok() ? *body : std::string();
  };
  auto tripped = [&] {
    const std::string m = metrics();
    return MetricValue(m,
                       "bulwark_circuit_breaker_state{route=\"echo\",state="
                       "\"open\"}") == 1 &&
           MetricValue(m,
                       "bulwark_rejections_total{reason=\"rate_limited\",route="
                       "\"echo\"}") > 0;
  };
  const std::string bench = BinaryPath("bulwark-bench");
  if (access(bench.c_str(), X_OK) == 0) {
    auto [code, log] = RunToEnd(
        bench, {"--target", absl::StrCat("127.0.0.1:", port), "--rpc", "echo",
                "--concurrency", "1", "--calls", "20", "--unique_payloads",
                "--fault_code", "14", "--progress=false", "--deadline", "5s"});
    std::cout << "bulwark-bench exit " << code << "\n" << log << std::endl;
  }
  if (!tripped()) {
    std::cout << "driving the calls with a gRPC client" << std::endl;
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                       grpc::InsecureChannelCredentials());
    auto stub = bulwark::demo::v1::Demo::NewStub(channel);
    for (int i = 0; i < 20; ++i) {
      bulwark::demo::v1::EchoRequest request;
      request.set_payload(absl::StrCat("call ", i));
      request.mutable_fault()->set_status_code(grpc::StatusCode::UNAVAILABLE);
      bulwark::demo::v1::EchoResponse response;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(5));
      stub->Echo(&ctx, request, &response);
    }
  }
  ASSERT_TRUE(tripped())
      << "the breaker did not open or nothing was rate limited:\n"
      << metrics();

  // Rates need traffic over time: from now on, a failing call every 100 ms
  // (answered by the rate limiter or the open breaker), until the sidecar is
  // stopped.
  BackgroundCalls background(port);

  // The series, with their labels, in Prometheus.
  for (const std::string query :
       {"bulwark_requests_total{route=\"echo\",code=\"UNAVAILABLE\"} > 0",
        "bulwark_requests_total{route=\"echo\",code=\"RESOURCE_EXHAUSTED\"} > "
        "0",
        "bulwark_rejections_total{route=\"echo\",reason=\"rate_limited\"} > 0",
        "bulwark_circuit_breaker_state{route=\"echo\",state=\"open\"} == 1"}) {
    EXPECT_TRUE(PollUntil([&] { return prom.HasResult(query); }, left()))
        << query << "\nlast answer: " << prom.last();
  }
  for (const std::string alert :
       {"BulwarkCircuitBreakerOpen", "BulwarkHighRejectionRatio"}) {
    EXPECT_TRUE(PollUntil([&] { return prom.Firing(alert); }, left()))
        << alert << " not firing; /api/v1/alerts: " << prom.last();
  }
  EXPECT_FALSE(prom.Firing("BulwarkNoHealthyEndpoint"));
  EXPECT_FALSE(prom.Firing("BulwarkSidecarDown"));
  EXPECT_FALSE(prom.Firing("BulwarkConfigReloadFailures"));
  EXPECT_FALSE(prom.Firing("BulwarkRetryBudgetExhausted"));
  EXPECT_FALSE(prom.Firing("BulwarkEndpointEjected"));
  EXPECT_FALSE(prom.Firing("BulwarkRedisErrors"));

  // Every dashboard query runs; those over series this test produced return
  // data.
  const YAML::Node dashboard =
      LoadYaml("deploy/grafana/bulwark-dashboard.json");
  // Series of policies the test's route and cluster do not use.
  const std::set<std::string> absent = {
      "bulwark_shadow_rejections_total",
      "bulwark_retry_budget_exhausted_total",
      "bulwark_endpoint_ejected",
      "bulwark_outlier_ejections_total",
      "bulwark_redis_requests_total",
      "bulwark_redis_request_duration_seconds_bucket",
      "bulwark_rate_limit_global_replicas"};
  for (const DashboardQuery& q : DashboardQueries(dashboard)) {
    const std::string expr =
        absl::StrReplaceAll(q.expr, {{"$__rate_interval", "1m"},
                                     {"$job", "bulwark"},
                                     {"$namespace", ".*"},
                                     {"$route", "echo"}});
    EXPECT_TRUE(prom.Runs(expr))
        << q.panel << ": `" << expr << "`: " << prom.last();
    PromqlNames names = NamesInPromql(q.expr);
    const bool filters = absl::StrContains(q.expr, "== 0");
    const bool produced =
        std::none_of(names.metrics.begin(), names.metrics.end(),
                     [&](const std::string& m) { return absent.contains(m); });
    if (produced && !filters) {
      EXPECT_TRUE(PollUntil([&] { return prom.HasResult(expr); },
                            std::min(left(), absl::Seconds(10))))
          << q.panel << ": no data for `" << expr << "`: " << prom.last();
    }
  }

  // An invalid configuration is refused on reload.
  ASSERT_TRUE(WriteFile(config_path, config + "no_such_field: 1\n").ok());
  EXPECT_TRUE(PollUntil(
      [&] { return prom.Firing("BulwarkConfigReloadFailures"); }, left()))
      << "BulwarkConfigReloadFailures not firing: " << prom.last() << "\n"
      << metrics();

  // The upstream goes away: its only endpoint fails the health checks.
  ASSERT_TRUE((*upstream)->Stop().ok());
  EXPECT_TRUE(PollUntil([&] { return prom.Firing("BulwarkNoHealthyEndpoint"); },
                        left()))
      << "BulwarkNoHealthyEndpoint not firing: " << prom.last();

  // The sidecar goes away: its scrapes fail.
  background.Stop();
  const ExitStatus stopped = (*sidecar)->Stop(absl::Seconds(10));
  EXPECT_TRUE(stopped.ExitedWith(0)) << stopped.ToString();
  EXPECT_TRUE(
      PollUntil([&] { return prom.Firing("BulwarkSidecarDown"); }, left()))
      << "BulwarkSidecarDown not firing: " << prom.last();

  if (testing::Test::HasFailure()) {
    std::cout << "prometheus log:\n"
              << (*prometheus_process)->Log() << std::endl;
  }
}

}  // namespace
}  // namespace bulwark::test
