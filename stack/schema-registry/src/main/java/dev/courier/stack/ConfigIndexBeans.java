package dev.courier.stack;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import java.util.ArrayList;
import javax.enterprise.inject.Produces;
import javax.inject.Singleton;

/** The bean the config-index extension would add at build time (it is not on Maven Central). */
@Singleton
public class ConfigIndexBeans {

    /** No dynamic (runtime-editable) properties: they keep their configured values. */
    @Produces
    @Singleton
    DynamicConfigPropertyList dynamicProperties() {
        return new DynamicConfigPropertyList(new ArrayList<>());
    }
}
