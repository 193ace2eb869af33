/** The shapes of an IommuBinding: its inputs (from the schema, plus what check adds), its outputs and its members. */
import { schemaDefault } from "../check";
import type { IommuBindingSchemaInputs } from "../generated/inputs";
import type { ConsoleRecord } from "../console/handover";

/** The schema's inputs (provider/generated/inputs.ts, from schema/iommu-binding.schema.json) and what check adds. */
export interface IommuBindingInputs extends IommuBindingSchemaInputs {
    /** Set by check: the resolved address. */
    address?: string;
    /** Set by check: one line per device whose driver will change. */
    plan?: string[];
}

/** One function of the bound IOMMU group, as the `members` output lists it. */
export interface BindingMember {
    /** Its PCI address (`0000:01:00.1`). */
    address: string;
    /** PCI vendor id, 4 hex digits without 0x (`10de`); sysfs `vendor`. */
    vendor: string;
    /** PCI device id, 4 hex digits (`2204`); sysfs `device`. */
    device: string;
    /** Subsystem vendor id (the board maker); sysfs `subsystem_vendor`. */
    subsystemVendor: string;
    /** Subsystem device id; sysfs `subsystem_device`. */
    subsystemDevice: string;
    /** PCI class code, 6 hex digits (`030000` VGA, `040300` HD audio); sysfs `class`. */
    class: string;
    /** The class in words (`VGA controller`, `Audio device`). */
    className: string;
    /** Driver before we bound it (restored on delete); null = none. */
    previousDriver: string | null;
    /** `driver_override` before we bound it (restored on delete); null = unset. */
    previousOverride: string | null;
    /** True when what the member had before us is unknown: found with an override of our driver that neither a
     *  journal nor driverctl recorded (see sysfs/journal.ts). Delete then clears the override and lets the kernel's
     *  driver matching choose (`drivers_probe`), as a reboot would; `previousDriver`/`previousOverride` are null. */
    previousProbe?: boolean;
    /** Driver now. */
    driver: string | null;
    /** Whether this binding manages the member (false for bridges and, with wholeGroup off, the others). */
    managed: boolean;
    /** The reset method destroy resets this member with between vfio-pci and its host driver (reset/plan.ts);
     *  absent: no reset on release (none usable, or resetOnRelease: false). */
    resetOnRelease?: string;
}

export interface IommuBindingOutputs extends IommuBindingInputs {
    address: string;
    driver: string;
    wholeGroup: boolean;
    allowBootVga: boolean;
    persistent: boolean;
    group: number;
    /** `/dev/vfio/<group>` for vfio drivers, else null. */
    vfioDevice: string | null;
    members: BindingMember[];
    /** `reset_method` of `address` before the binding first wrote `resetMethod` ("" = none): what destroy restores.
     *  Absent when the binding never set it. */
    resetMethodBefore?: string;
    /** What consoleHandover did to the host's console (console/handover.ts): the display manager it stopped, the
     *  vtconsoles and boot framebuffers it unbound, the dead-man it armed; destroy gives back exactly this. Absent:
     *  no handover was made. */
    console?: ConsoleRecord;
}

const SCHEMA = "iommu-binding.schema.json";
/** The schema's defaults for inputs validate() did not fill (an older state, diff, read). */
export const defaults = (i: IommuBindingInputs) => ({
    driver: i.driver ?? schemaDefault<string>(SCHEMA, "driver"),
    wholeGroup: i.wholeGroup ?? schemaDefault<boolean>(SCHEMA, "wholeGroup"),
    allowBootVga: i.allowBootVga ?? schemaDefault<boolean>(SCHEMA, "allowBootVga"),
    persistent: i.persistent ?? schemaDefault<boolean>(SCHEMA, "persistent"),
    consoleHandover: i.consoleHandover ?? schemaDefault<boolean>(SCHEMA, "consoleHandover"),
    displayManager: i.displayManager ?? schemaDefault<string>(SCHEMA, "displayManager"),
    deadManSeconds: i.deadManSeconds ?? schemaDefault<number>(SCHEMA, "deadManSeconds"),
});
