/**
 * pulumi-vfio: converge a Linux GPU-passthrough host from a Pulumi program.
 *
 * ```typescript
 * import * as vfio from "pulumi-vfio";
 * ```
 */
export { IommuBinding, IommuBindingArgs, DeviceSelectorArgs, BindingMember } from "./iommuBinding";
export { ConnectionArgs } from "./types";
export { getHost, getHostOutput, GetHostArgs, GetHostOutputArgs, HostInventory, InventoryDevice, InventoryGroup, MdevType, MdevParent, KvmfrDevice as KvmfrDeviceInfo } from "./getHost";
export { thinProvider } from "./provider";
export { KvmfrDevice, KvmfrDeviceArgs, KvmfrActual } from "./kvmfrDevice";
export { PassthroughVm, PassthroughVmArgs, PassthroughDeviceArgs, MdevArgs, SharedMemoryArgs, DiskArgs, CpuArgs, NetworkArgs, FirmwareArgs, HostDevice } from "./passthroughVm";
export { MdevInstance, MdevInstanceArgs, MdevAttrArgs, VramBoundsArgs } from "./mdevInstance";
export { VirtualFunctions, VirtualFunctionsArgs, VirtualFunction } from "./virtualFunctions";
export { BootConfig, BootConfigArgs, ModuleSettingArgs } from "./bootConfig";
export { VfioHost, VfioHostOptions, VfioHostResource } from "./vfioHost";
export {
    loadHostDefinition,
    parseHostDefinition,
    checkHostDefinition,
    HostDefinition,
    HostDefinitionError,
    HostProblem,
    HostConnection,
    BindingEntry,
    VirtualFunctionsEntry,
    MdevEntry,
    KvmfrEntry,
    VmEntry,
    VmDeviceRef,
    VmMdevRef,
    VmVirtualFunctionRef,
} from "./hostDefinition";
export { planHost, HostPlan, PlannedResource, OutputRef } from "./hostPlan";
