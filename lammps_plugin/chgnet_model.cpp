// TorchScript side of the chgnet pair style: loads the exported model and
// runs it on one graph. Only torch headers are included here (see
// chgnet_model.h for why).

#include "chgnet_model.h"

#include <ATen/Version.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <tuple>

namespace crossfunctional {

namespace {

std::string first_line(const std::string &text)
{
  // c10::Error messages carry a C++ backtrace after the first lines; keep the
  // part a user can act on.
  std::istringstream stream(text);
  std::string line, out;
  while (std::getline(stream, line)) {
    if (line.empty()) continue;
    if (line.rfind("Exception raised from", 0) == 0) break;
    if (!out.empty()) out += " ";
    out += line;
    if (out.size() > 400) break;
  }
  return out.empty() ? text : out;
}

std::string clean_message(const std::string &text)
{
  // Errors raised inside the TorchScript interpreter come with a script
  // traceback; the last "...Error: message" line is the reason.
  std::istringstream stream(text);
  std::string line, last;
  while (std::getline(stream, line)) {
    auto pos = line.find("Error: ");
    if (pos != std::string::npos && line.rfind("  ", 0) != 0) last = line;
  }
  return last.empty() ? first_line(text) : last;
}

}    // namespace

struct TorchModel::Impl {
  torch::jit::Module module;
  torch::Dtype dtype = torch::kFloat32;
  torch::Device device{torch::kCPU};
  // ahead-of-time compiled network and gradient (pair_style chgnet model.pt2), or null
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package;
};

namespace {

bool ends_with(const std::string &text, const std::string &suffix)
{
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// 64-bit FNV-1a of a file's bytes as 16 hex digits (crossfunctional.calculators.aot.fnv1a64)
std::string fnv1a64(const std::string &path)
{
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + path + "'");
  uint64_t h = 0xcbf29ce484222325ULL;
  std::istreambuf_iterator<char> it(in), end;
  for (; it != end; ++it) {
    h ^= static_cast<uint8_t>(*it);
    h *= 0x100000001b3ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}    // namespace

TorchModel::TorchModel(const std::string &model_path, const std::string &device) : impl_(new Impl)
{
  // "model.pt2": the ahead-of-time package, with its TorchScript file "model.pt" beside it
  const bool aot = ends_with(model_path, ".pt2");
  const std::string path = aot ? model_path.substr(0, model_path.size() - 1) : model_path;
  if (aot) {
    std::ifstream probe(path);
    if (!probe)
      throw std::runtime_error("'" + model_path + "' needs its TorchScript file '" + path +
                               "' beside it (both are written by 'crossfunctional export MODEL --aot -o " + path + "')");
  }
  // The profiling graph executor re-specialises the graph for every new
  // input shape (every MD step has a different number of edges) and is
  // several times slower here than plain interpretation.
  torch::jit::setGraphExecutorOptimize(false);
  try {
    impl_->device = torch::Device(device);
  } catch (const std::exception &e) {
    throw std::runtime_error("invalid device '" + device + "': " + first_line(e.what()));
  }
  if (impl_->device.is_cuda() && !torch::cuda::is_available())
    throw std::runtime_error("device '" + device +
                             "' requested but this torch build has no usable CUDA device");
  try {
    impl_->module = torch::jit::load(path, impl_->device);
  } catch (const std::exception &e) {
    throw std::runtime_error("cannot load '" + path +
                             "' as a TorchScript model: " + first_line(e.what()));
  }
  impl_->module.eval();
  if (!impl_->module.hasattr("metadata_json") || !impl_->module.hasattr("atom_graph_cutoff"))
    throw std::runtime_error("'" + path +
                             "' is a TorchScript file but not a crossfunctional export "
                             "(no metadata_json / atom_graph_cutoff attribute); write one with "
                             "'crossfunctional export chgnet-r2scan -o model.pt'");
  metadata_ = impl_->module.attr("metadata_json").toStringRef();
  cutoff_ = impl_->module.attr("atom_graph_cutoff").toDouble();
  bool found = false;
  for (const auto &p : impl_->module.parameters()) {
    impl_->dtype = p.scalar_type();
    found = true;
    break;
  }
  if (!found) throw std::runtime_error("'" + path + "' has no parameters");
  if (impl_->dtype == torch::kFloat32)
    dtype_name_ = "float32";
  else if (impl_->dtype == torch::kFloat64)
    dtype_name_ = "float64";
  else
    throw std::runtime_error("'" + path + "' has parameters of an unsupported dtype (need float32 or float64)");
  device_name_ = impl_->device.str();
  // the segment interface of the multi-rank pass (older exports lack it)
  if (impl_->module.find_method("seg_first") && impl_->module.find_method("seg_mid") &&
      impl_->module.find_method("seg_last") && impl_->module.find_method("num_segments") &&
      impl_->module.hasattr("bond_graph_cutoff") && impl_->module.hasattr("dim")) {
    num_segments_ = static_cast<int>(impl_->module.run_method("num_segments").toInt());
    feature_width_ = impl_->module.attr("dim").toInt();
    bond_cutoff_ = impl_->module.attr("bond_graph_cutoff").toDouble();
  }
  if (aot) load_package(model_path, path);
}

void TorchModel::load_package(const std::string &package_path, const std::string &torchscript_path)
{
  std::unordered_map<std::string, std::string> meta;
  try {
    meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(package_path, "model");
  } catch (const std::exception &e) {
    throw std::runtime_error("cannot read '" + package_path + "' as an ahead-of-time package: " + first_line(e.what()));
  }
  if (!meta.count("crossfunctional_aot"))
    throw std::runtime_error("'" + package_path + "' is not a crossfunctional package; write one with "
                             "'crossfunctional export MODEL --aot -o " + torchscript_path + "'");
  // the package's key against this plugin, this CPU and the TorchScript file beside it
  const std::map<std::string, std::string> here = {
      {"torch", TORCH_VERSION},
      {"instruction_set", at::get_cpu_capability()},
      {"device", impl_->device.is_cuda() ? "cuda" : "cpu"},
      {"dtype", dtype_name_},
      {"torchscript_fnv1a64", fnv1a64(torchscript_path)},
  };
  std::string mismatch;
  for (const auto &[key, value] : here) {
    auto found = meta.find(key);
    const std::string theirs = found == meta.end() ? "(none)" : found->second;
    if (theirs != value) mismatch += (mismatch.empty() ? "" : ", ") + key + " " + theirs + " (here " + value + ")";
  }
  if (!mismatch.empty()) {
    const bool other_file = meta.count("torchscript_fnv1a64") && meta["torchscript_fnv1a64"] != here.at("torchscript_fnv1a64");
    throw std::runtime_error("refusing '" + package_path + "': it was compiled for " + mismatch +
                             (other_file ? "; it belongs to another '" + torchscript_path + "'" : "") +
                             "; compile it again on this machine with 'crossfunctional export MODEL --aot -o " +
                             torchscript_path + "'");
  }
  try {
    impl_->package = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package_path, "model");
  } catch (const std::exception &e) {
    throw std::runtime_error("cannot load '" + package_path + "': " + first_line(e.what()));
  }
  compiled_ = true;
}

TorchModel::~TorchModel() = default;

namespace {

// The model's inputs (atomic numbers [N], edge index [2, E], image shifts
// [E, 3], edge vectors [E, 3]) on the model's device, the vectors in its
// dtype. from_blob does not copy and the module never writes to its inputs;
// .to() copies whenever the device or dtype differs, and always for the
// vectors when copy_vectors is set (they become an autograd leaf).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>
input_tensors(const GraphInput &in, const torch::TensorOptions &model_opts, bool copy_vectors)
{
  const int64_t n = static_cast<int64_t>(in.atomic_numbers.size());
  const int64_t e = in.num_edges();
  const auto long_cpu = torch::TensorOptions().dtype(torch::kInt64);
  const auto double_cpu = torch::TensorOptions().dtype(torch::kFloat64);
  const auto long_model = long_cpu.device(model_opts.device());
  auto z = torch::from_blob(const_cast<int64_t *>(in.atomic_numbers.data()), {n}, long_cpu)
               .to(model_opts.device());
  if (e == 0)
    return {z, torch::zeros({2, 0}, long_model), torch::zeros({0, 3}, long_model),
            torch::zeros({0, 3}, model_opts)};
  auto edge_index = torch::from_blob(const_cast<int64_t *>(in.edge_index.data()), {2, e}, long_cpu)
                        .to(model_opts.device());
  auto shifts = torch::from_blob(const_cast<int64_t *>(in.edge_shifts.data()), {e, 3}, long_cpu)
                    .to(model_opts.device());
  auto vectors = torch::from_blob(const_cast<double *>(in.edge_vectors.data()), {e, 3}, double_cpu)
                     .to(model_opts, false, copy_vectors);
  return {z, edge_index, shifts, vectors};
}

// Site energies [N], magmoms [N] and dE/d(edge vectors) [E, 3] into out, as
// float64 on the host; wrong shapes are an error.
void copy_output(const torch::Tensor &energies, const torch::Tensor &magmoms, const torch::Tensor &grad,
                 int64_t n, int64_t e, GraphOutput &out)
{
  auto host = [](const torch::Tensor &t) { return t.detach().to(torch::kCPU, torch::kFloat64).contiguous(); };
  auto en = host(energies), mag = host(magmoms), g = host(grad);
  if (en.numel() != n || mag.numel() != n || g.numel() != 3 * e)
    throw std::runtime_error("model returned tensors of unexpected shape");
  out.site_energies.assign(en.data_ptr<double>(), en.data_ptr<double>() + n);
  out.magmoms.assign(mag.data_ptr<double>(), mag.data_ptr<double>() + n);
  out.grad.assign(g.data_ptr<double>(), g.data_ptr<double>() + 3 * e);
}

}  // namespace

void TorchModel::evaluate(const GraphInput &in, GraphOutput &out)
{
  const int64_t n = static_cast<int64_t>(in.atomic_numbers.size());
  const int64_t e = in.num_edges();
  try {
    torch::jit::setGraphExecutorOptimize(false);
    torch::Tensor z, edge_index, shifts, vectors;
    std::tie(z, edge_index, shifts, vectors) =
        input_tensors(in, torch::TensorOptions().dtype(impl_->dtype).device(impl_->device), false);
    if (impl_->package) {
      // graph construction in TorchScript, network and gradient in the package; graphs with a size
      // below 2 (the package's sizes start there) or above the recompute threshold run TorchScript
      auto graph = impl_->module.run_method("build_graph", edge_index, shifts, vectors, n).toTuple();
      const auto &g = graph->elements();
      // Graph fields (crossfunctional.models.chgnet.Graph): 0 center, 4 short_bonds, 5 angle_center,
      // 10 bond_length, 11 angle
      const int64_t bonds = g[10].toTensor().size(0), shorts = g[4].toTensor().size(0),
                    angles = g[11].toTensor().size(0), centers = g[0].toTensor().size(0);
      const int64_t threshold = impl_->module.attr("recompute_threshold").toInt();
      if (std::min({n, bonds, shorts, angles}) >= 2 && centers + angles <= threshold) {
        std::vector<at::Tensor> inputs{z, vectors};
        for (const auto &item : g) inputs.push_back(item.toTensor());
        auto outputs = impl_->package->run(inputs);
        copy_output(outputs[0], outputs[1], outputs[2], n, e, out);
        return;
      }
    }
    std::vector<torch::jit::IValue> inputs{z, edge_index, shifts, vectors, true};
    auto result = impl_->module.forward(inputs).toTuple();
    const auto &items = result->elements();
    copy_output(items[0].toTensor(), items[1].toTensor(), items[2].toTensor(), n, e, out);
  } catch (const std::exception &err) {
    throw std::runtime_error(clean_message(err.what()));
  }
}

namespace {

// torch::autograd::grad of the outputs that require grad, zeros for inputs
// they do not reach (as _grad_or_zeros in chgnet.py)
std::vector<torch::Tensor> grad_or_zeros(const std::vector<torch::Tensor> &outputs,
                                         const std::vector<torch::Tensor> &adjoints,
                                         const std::vector<torch::Tensor> &inputs)
{
  std::vector<torch::Tensor> outs, adjs;
  for (size_t k = 0; k < outputs.size(); k++)
    if (outputs[k].requires_grad()) {
      outs.push_back(outputs[k]);
      adjs.push_back(adjoints[k]);
    }
  std::vector<torch::Tensor> result;
  std::vector<torch::Tensor> grads;
  if (!outs.empty()) grads = torch::autograd::grad(outs, inputs, adjs, false, false, true);
  for (size_t k = 0; k < inputs.size(); k++)
    result.push_back(!grads.empty() && grads[k].defined() ? grads[k] : torch::zeros_like(inputs[k]));
  return result;
}

torch::Tensor leaf(const torch::Tensor &t)
{
  return t.detach().requires_grad_(true);
}

std::vector<torch::Tensor> tensors(const torch::jit::IValue &value)
{
  std::vector<torch::Tensor> out;
  for (const auto &item : value.toTuple()->elements()) out.push_back(item.toTensor());
  return out;
}

}    // namespace

void TorchModel::evaluate_segments(const GraphInput &in, const std::vector<double> &weight,
                                   FeatureExchange *exchange, GraphOutput &out)
{
  if (num_segments_ < 1)
    throw std::runtime_error("the model file has no segment methods (seg_first, seg_mid, seg_last): "
                             "it was exported by an older crossfunctional; export it again");
  if (num_segments_ < 2)
    throw std::runtime_error("the multi-rank pass needs a model with at least two atom convolutions");
  const int64_t n = static_cast<int64_t>(in.atomic_numbers.size());
  const int64_t e = in.num_edges();
  const int64_t width = feature_width_;
  const int nseg = num_segments_;
  if (static_cast<int64_t>(weight.size()) != n)
    throw std::runtime_error("evaluate_segments: one energy weight per node needed");
  const auto double_cpu = torch::TensorOptions().dtype(torch::kFloat64);
  const auto model_opts = torch::TensorOptions().dtype(impl_->dtype).device(impl_->device);

  std::vector<double> rows;
  if (n == 0) {
    // nothing to compute here, but every rank takes part in every exchange
    // (a rank with no atoms still relays data between its neighbours)
    if (exchange)
      for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < nseg - 1; k++) {    // as in the pass below
          rows.clear();
          if (pass == 0)
            exchange->forward(rows, static_cast<int>(width));
          else
            exchange->reverse(rows, static_cast<int>(width));
        }
    out.site_energies.clear();
    out.magmoms.clear();
    out.grad.clear();
    out.num_angles = 0;
    return;
  }

  // host round trip of one [n, width] feature (or adjoint) matrix through the exchange
  auto exchanged = [&](const torch::Tensor &t, bool forward) -> torch::Tensor {
    if (!exchange) return t.detach();
    auto host = t.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    rows.assign(host.data_ptr<double>(), host.data_ptr<double>() + n * width);
    if (forward)
      exchange->forward(rows, static_cast<int>(width));
    else
      exchange->reverse(rows, static_cast<int>(width));
    return torch::from_blob(rows.data(), {n, width}, double_cpu).to(model_opts, false, true);
  };

  try {
    torch::jit::setGraphExecutorOptimize(false);
    torch::AutoGradMode grad_mode(true);
    auto &module = impl_->module;
    torch::Tensor z, edge_index, shifts, vectors;
    std::tie(z, edge_index, shifts, vectors) = input_tensors(in, model_opts, true);
    auto w = torch::from_blob(const_cast<double *>(weight.data()), {n}, double_cpu).to(model_opts, false, true);

    // topology (and a copy of the geometry without gradient) from the plain
    // vectors; only seg_first reads the geometry, from the leaf r
    auto topology = module.run_method("build_graph", edge_index, shifts, vectors, n);
    out.num_angles = topology.toTuple()->elements()[5].toTensor().size(0);    // Graph.angle_center
    auto r = leaf(vectors);
    // as CHGNet.forward: above recompute_threshold edges + angles keep only
    // the state between segments and recompute each segment in the backward pass
    const bool recompute = e + out.num_angles > module.attr("recompute_threshold").toInt();
    auto run = [&](int k, const std::vector<torch::Tensor> &x) -> std::vector<torch::Tensor> {
      if (k == 0)
        return tensors(module.run_method("seg_first", z, module.run_method("with_geometry", topology, x[0])));
      return tensors(module.run_method("seg_mid", k, x[0], x[1], x[2], x[3], x[4], topology));
    };

    // forward: segments 0 .. nseg-2, each followed by the exchange of its
    // atom features; seg_in[k] are the leaves segment k starts from
    std::vector<std::vector<torch::Tensor>> seg_in(nseg - 1), seg_out(nseg - 1);
    std::vector<torch::Tensor> x = {r};
    for (int k = 0; k < nseg - 1; k++) {
      seg_in[k] = x;
      {
        torch::AutoGradMode record(!recompute);
        seg_out[k] = run(k, x);
      }
      const auto &o = seg_out[k];
      if (k == 0)
        x = {leaf(exchanged(o[0], true)), leaf(o[1]), leaf(o[2]), leaf(o[3]), leaf(o[4])};
      else
        x = {leaf(exchanged(o[0], true)), leaf(o[1]), leaf(o[2]), x[3], x[4]};
    }
    auto last = tensors(module.run_method("seg_last", z, x[0], x[1], x[2], x[3], x[4], topology));
    auto energy = (last[0] * w).sum();

    // backward, segment by segment; the atom-feature adjoints of ghost rows
    // go back to their owners before the segment that produced them
    auto adj = grad_or_zeros({energy}, {torch::ones_like(energy)}, x);
    torch::Tensor adj_a = exchanged(adj[0], false), adj_b = adj[1], adj_c = adj[2];
    torch::Tensor adj_wag = adj[3], adj_wbg = adj[4];
    torch::Tensor grad;
    for (int k = nseg - 2; k >= 0; k--) {
      const auto outputs = recompute ? run(k, seg_in[k]) : seg_out[k];
      seg_out[k].clear();
      if (k == 0) {
        grad = grad_or_zeros(outputs, {adj_a, adj_b, adj_c, adj_wag, adj_wbg}, seg_in[0])[0];
        break;
      }
      adj = grad_or_zeros(outputs, {adj_a, adj_b, adj_c}, seg_in[k]);
      adj_a = exchanged(adj[0], false);
      adj_b = adj[1];
      adj_c = adj[2];
      adj_wag = adj_wag + adj[3];
      adj_wbg = adj_wbg + adj[4];
    }

    copy_output(last[0], last[1], grad, n, e, out);
  } catch (const std::exception &err) {
    throw std::runtime_error(clean_message(err.what()));
  }
}

int TorchModel::set_num_threads(int n)
{
  if (n > 0) torch::set_num_threads(n);
  return torch::get_num_threads();
}

int TorchModel::num_threads()
{
  return torch::get_num_threads();
}

}    // namespace crossfunctional
