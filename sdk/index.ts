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
