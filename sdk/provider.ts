import * as pulumi from "@pulumi/pulumi";

/** The resource implementations in `pulumi-vfio/provider` that a serialized provider may call. */
export type ImplementationName = "iommuBinding" | "mdevInstance" | "virtualFunctions" | "kvmfrDevice" | "passthroughVm" | "bootConfig";

/**
 * The dynamic provider stored in each resource's state: a thin closure that captures nothing but `kind` and
 * `require`s the implementation by package name inside every method. The state stays small, an upgrade of
 * pulumi-vfio applies to existing resources (delete and refresh run the stored code), and no client, socket or
 * secret is ever captured.
 */
export function thinProvider(kind: ImplementationName): pulumi.dynamic.ResourceProvider {
    return {
        async check(olds: any, news: any) {
            return require("pulumi-vfio/provider")[kind].check(olds, news);
        },
        async diff(id: string, olds: any, news: any) {
            return require("pulumi-vfio/provider")[kind].diff(id, olds, news);
        },
        async create(inputs: any) {
            return require("pulumi-vfio/provider")[kind].create(inputs);
        },
        async read(id: string, props: any) {
            return require("pulumi-vfio/provider")[kind].read(id, props);
        },
        async update(id: string, olds: any, news: any) {
            return require("pulumi-vfio/provider")[kind].update(id, olds, news);
        },
        async delete(id: string, props: any) {
            return require("pulumi-vfio/provider")[kind].delete(id, props);
        },
    };
}

/** Resource options every pulumi-vfio resource gets: the connection (keys, passwords) is a secret output. */
export function withSecretConnection(opts?: pulumi.CustomResourceOptions): pulumi.CustomResourceOptions {
    return pulumi.mergeOptions(opts, { additionalSecretOutputs: ["connection"] });
}

/** Wrap a connection input as a secret, so it is encrypted in state and masked in logs. */
export function secretConnection<T>(c: pulumi.Input<T> | undefined): pulumi.Output<pulumi.Unwrap<T>> | undefined {
    return c === undefined ? undefined : pulumi.secret(c);
}
