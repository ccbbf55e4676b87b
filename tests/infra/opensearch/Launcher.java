// Single-node OpenSearch 2.x for tests, embedded from Maven jars (see tests/infra/opensearch.sh).
// Embedding skips the security manager, jar-hell and bootstrap checks that the real bootstrap runs,
// and lets the plugins come from the classpath instead of a modules/ folder of plugin descriptors.
// Configured through system properties: lp.home, lp.data, lp.http.port, lp.transport.port.
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;

public final class Launcher {
    private static final String NODE_NAME = "lp-test-node";

    // Node's constructor that takes classpath plugins is protected.
    static final class TestNode extends Node {
        TestNode(Environment env) {
            super(env, List.of(
                    org.opensearch.transport.Netty4Plugin.class,
                    org.opensearch.analysis.common.CommonAnalysisPlugin.class,
                    org.opensearch.painless.PainlessPlugin.class,
                    org.opensearch.index.mapper.MapperExtrasPlugin.class), true);
        }
    }

    private static String prop(String name) {
        String v = System.getProperty(name);
        if (v == null || v.isEmpty()) throw new IllegalArgumentException("missing -D" + name);
        return v;
    }

    public static void main(String[] args) throws Exception {
        Path home = Path.of(prop("lp.home")).toAbsolutePath();
        Path data = Path.of(prop("lp.data")).toAbsolutePath();
        // Environment insists on these folders existing, even empty.
        for (String d : new String[] {"modules", "plugins", "config"}) Files.createDirectories(home.resolve(d));
        Files.createDirectories(data);

        Settings.Builder builder = Settings.builder();
        // A test's node with a small request limit (opensearch.sh OPENSEARCH_HTTP_MAX_CONTENT_LENGTH).
        String maxContent = System.getProperty("lp.http.max_content_length");
        if (maxContent != null && !maxContent.isEmpty()) builder.put("http.max_content_length", maxContent);
        Settings settings = builder
                .put("path.home", home.toString())
                .put("path.data", data.toString())
                .put("node.name", NODE_NAME)
                .put("cluster.name", "log-processor-test")
                .put("discovery.type", "single-node")
                .put("network.host", "127.0.0.1")
                .put("http.port", prop("lp.http.port"))
                .put("transport.port", prop("lp.transport.port"))
                // small test disks must not flip indices to read-only
                .put("cluster.routing.allocation.disk.threshold_enabled", false)
                .put("action.auto_create_index", true)
                // tests delete indices by pattern
                .put("action.destructive_requires_name", false)
                // cluster.default_number_of_replicas=0 is read from the cluster state only, not from
                // node settings: opensearch.sh sets it as a persistent cluster setting after start.
                .build();
        Environment env = InternalSettingsPreparer.prepareEnvironment(
                settings, Map.of(), home.resolve("config"), () -> NODE_NAME);

        Node node;
        try {
            node = new TestNode(env);
        } catch (Throwable t) {
            t.printStackTrace();
            System.exit(1);   // plugin/settings errors: fail fast instead of idling until the start timeout
            return;
        }
        CountDownLatch closed = new CountDownLatch(1);
        // SIGTERM/SIGINT: close the node so Lucene commits and the data folder stays reusable.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(20, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "lp-shutdown"));
        try {
            node.start();
        } catch (Throwable t) {
            t.printStackTrace();
            System.exit(1);
        }
        // OpenSearch threads are daemons: keep the JVM alive until the hook has run.
        closed.await();
    }
}
