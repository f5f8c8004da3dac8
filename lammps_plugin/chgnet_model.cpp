// TorchScript side of the chgnet pair style: loads the exported model and
// runs it on one graph. Only torch headers are included here (see
// chgnet_model.h for why).

#include "chgnet_model.h"

#include <torch/script.h>
#include <torch/torch.h>

#include <sstream>
#include <stdexcept>

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
};

TorchModel::TorchModel(const std::string &path, const std::string &device) : impl_(new Impl)
{
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
}

TorchModel::~TorchModel() = default;

void TorchModel::evaluate(const GraphInput &in, GraphOutput &out)
{
  const int64_t n = static_cast<int64_t>(in.atomic_numbers.size());
  const int64_t e = in.num_edges();
  const auto long_cpu = torch::TensorOptions().dtype(torch::kInt64);
  const auto double_cpu = torch::TensorOptions().dtype(torch::kFloat64);
  try {
    torch::jit::setGraphExecutorOptimize(false);
    // from_blob does not copy; the module never writes to its inputs, and
    // .to() copies whenever the device or dtype differs.
    auto z = torch::from_blob(const_cast<int64_t *>(in.atomic_numbers.data()), {n}, long_cpu)
                 .to(impl_->device);
    torch::Tensor edge_index, shifts, vectors;
    if (e > 0) {
      edge_index = torch::from_blob(const_cast<int64_t *>(in.edge_index.data()), {2, e}, long_cpu)
                       .to(impl_->device);
      shifts = torch::from_blob(const_cast<int64_t *>(in.edge_shifts.data()), {e, 3}, long_cpu)
                   .to(impl_->device);
      vectors = torch::from_blob(const_cast<double *>(in.edge_vectors.data()), {e, 3}, double_cpu)
                    .to(impl_->device, impl_->dtype);
    } else {
      edge_index = torch::zeros({2, 0}, long_cpu.device(impl_->device));
      shifts = torch::zeros({0, 3}, long_cpu.device(impl_->device));
      vectors = torch::zeros({0, 3}, double_cpu.dtype(impl_->dtype).device(impl_->device));
    }
    std::vector<torch::jit::IValue> inputs{z, edge_index, shifts, vectors, true};
    auto result = impl_->module.forward(inputs).toTuple();
    const auto &items = result->elements();
    auto energies = items[0].toTensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
    auto magmoms = items[1].toTensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
    auto grad = items[2].toTensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
    if (energies.numel() != n || magmoms.numel() != n || grad.numel() != 3 * e)
      throw std::runtime_error("model returned tensors of unexpected shape");
    out.site_energies.assign(energies.data_ptr<double>(), energies.data_ptr<double>() + n);
    out.magmoms.assign(magmoms.data_ptr<double>(), magmoms.data_ptr<double>() + n);
    out.grad.assign(grad.data_ptr<double>(), grad.data_ptr<double>() + 3 * e);
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
