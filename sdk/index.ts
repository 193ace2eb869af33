/**
 * pulumi-vfio: converge a Linux GPU-passthrough host from a Pulumi program.
 *
 * ```typescript
 * import * as vfio from "pulumi-vfio";
 * ```
 */
export { IommuBinding, IommuBindingArgs, DeviceSelectorArgs, BindingMember } from "./iommuBinding";
export { ConnectionArgs } from "./types";
export { thinProvider } from "./provider";
