/**
 * pulumi-vfio's implementation: the kernel ABI (sysfs), QEMU, and the check/diff/create/read/update/delete of each
 * resource over a {@link Host}. Knows nothing of Pulumi's engine; `sdk/` is the Pulumi face that calls into it.
 */
export * as host from "./host";
export * from "./host";
export * as pci from "./sysfs/pci";
export * as iommu from "./sysfs/iommu";
export { scanHost, resolveSelector, DeviceSelector } from "./sysfs/scan";
export { iommuBinding } from "./iommuBinding";
export { getHostInventory, formatInventory, HostInventory } from "./inventory";
export * as iommuBindingImpl from "./iommuBinding";
export { UNKNOWN, CheckFailure, CheckResult } from "./check";
export { SysfsError, PlanError } from "./errors";
export { kvmfrDevice } from "./kvmfrDevice";
export { passthroughVm } from "./passthroughVm";
export * as qemu from "./qemu/cmdline";
export { QmpClient, QmpError, QmpTimeout } from "./qemu/qmp";
export { mdevInstance } from "./mdevInstance";
export { virtualFunctions } from "./virtualFunctions";
export * as mdev from "./sysfs/mdev";
export * as sriov from "./sysfs/sriov";
export { bootConfig } from "./bootConfig";
